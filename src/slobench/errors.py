"""The one exception type that the CLI turns into a single clear error line (no traceback)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

# Control characters (tab aside) and Unicode line breaks -> their escaped spelling (``\\n``).
_ESCAPES = {c: ascii(chr(c))[1:-1] for c in [*range(0x20), 0x7F, *range(0x80, 0xA0),
                                               0x2028, 0x2029] if c != 0x09}


class UserError(Exception):
    """Bad input from the user: the message says what is wrong, where, and how to fix it.

    The CLI prints ``error: <message>`` on one line and exits with ``exit_code``.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        # Messages quote outside input (option values, file lines): escape line breaks and
        # terminal control characters so the message stays one harmless line.
        super().__init__(str(message).translate(_ESCAPES))
        self.exit_code = exit_code


def did_you_mean(word: str, choices: Iterable[str] | Mapping[str, str], *,
                 cutoff: float = 0.6) -> str:
    """``"did you mean 'x'? "`` for the choice closest to ``word``, or ``""``: the hint of every
    one-line error about an unknown name. A mapping compares its keys and shows their values
    (normalized lookup keys -> canonical names)."""
    shown = choices if isinstance(choices, Mapping) else {c: c for c in choices}
    close = difflib.get_close_matches(word, list(shown), n=1, cutoff=cutoff)
    return f"did you mean '{shown[close[0]]}'? " if close else ""
