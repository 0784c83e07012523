"""The one exception type that the CLI turns into a single clear error line (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message says what is wrong, where, and how to fix it.

    The CLI prints ``error: <message>`` on one line and exits with ``exit_code``.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
