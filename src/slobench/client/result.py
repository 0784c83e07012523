"""The mutable per-request result a backend fills in; ``to_row`` gives one Records row."""

from __future__ import annotations

from typing import Any


class RequestResult:
    __slots__ = (
        "answer",
        "app",
        "cached_tokens",
        "client_id",
        "done_s",
        "error",
        "first_answer_s",
        "first_token_s",
        "http_status",
        "input_tokens",
        "last_io_s",
        "output_tokens",
        "queue_s",
        "reasoning_tokens",
        "request_id",
        "retries",
        "scheduled_s",
        "sent_s",
        "status",
        "token_count_source",
        "token_times",
    )

    def __init__(self, request_id: str, client_id: str, app: str, scheduled_s: float,
                 input_tokens: int) -> None:
        self.request_id = request_id
        self.client_id = client_id
        self.app = app
        self.scheduled_s = scheduled_s
        self.input_tokens = input_tokens
        self.sent_s: float | None = None
        self.first_token_s: float | None = None
        self.first_answer_s: float | None = None
        self.done_s: float | None = None
        self.output_tokens = 0
        self.reasoning_tokens = 0
        self.token_times: list[float] = []
        self.status = "cancelled"
        self.http_status: int | None = None
        self.error: str | None = None
        self.queue_s = 0.0
        self.token_count_source = "none"
        self.cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
        # times sent again after a pooled keep-alive connection closed before any response
        self.retries = 0
        # when the last bytes of the response arrived (run clock): the runner's stall watchdog
        self.last_io_s: float | None = None
        # the answer's text pieces, kept only when a session's next turn needs the history
        self.answer: list[str] | None = None

    def fail(self, status: str, error: str, done_s: float, http_status: int | None = None) -> None:
        self.status = status
        self.error = error[:500]
        self.done_s = done_s
        if http_status is not None:
            self.http_status = http_status

    def to_row(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "client_id": self.client_id,
            "app": self.app,
            "scheduled_s": self.scheduled_s,
            "sent_s": self.sent_s,
            "first_token_s": self.first_token_s,
            "first_answer_s": self.first_answer_s,
            "done_s": self.done_s,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "token_times": self.token_times,
            "status": self.status,
            "http_status": self.http_status,
            "error": self.error,
            "queue_s": self.queue_s,
            "token_count_source": self.token_count_source,
            "cached_tokens": self.cached_tokens,
            "retries": self.retries,
        }
