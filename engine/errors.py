"""The one exception tree of onnxplain.

Every error the engine raises on purpose is an :class:`OnnxplainError`. Each
carries a stable machine-readable ``code`` (part of the HTTP contract), a
human ``detail`` and, where one input is to blame, the ``field`` that names it
(``instances[3].age``). ``service/errors.py`` maps the classes to HTTP
statuses; the engine itself knows nothing of HTTP::

    OnnxplainError
    ├── InvalidRequest          a request (JSON, card, rows, parameters) is wrong
    │   └── UnknownField        a JSON object carries a field we do not know
    ├── ModelRejected           an uploaded model file is unsafe or unusable
    ├── Unauthorized            no API key, or one that is invalid or revoked
    ├── Forbidden               the key lacks the scope the call needs
    ├── NotFound                a model, version, variant, job or audit is absent
    ├── Conflict                the resource is in a state that forbids the call
    ├── PayloadTooLarge         an upload or body is over its configured cap
    ├── Unavailable             a dependency (Redis, the store) cannot be reached
    │   └── QueueFull           a queue holds its cap of waiting jobs: retry later
    ├── JobCanceled             a running job saw its cancel flag and stopped
    ├── JobRefused              a queued job names a function outside the queue contract
    └── ExplanationFailed       the model or an explainer failed on valid input
        └── ModelLimitExceeded  a model call needed more memory or time than allowed

Example::

    raise InvalidRequest("value is not finite", code="non_finite", field="instances[0].age")
"""

from __future__ import annotations


class OnnxplainError(Exception):
    """Base of every deliberate onnxplain error.

    Args:
        detail: What went wrong, for a person.
        code: Stable snake_case code; defaults to the class's ``code``.
        field: The input that is to blame, as a JSON path, when there is one.
    """

    code = "error"
    title = "Error"

    def __init__(self, detail: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.field = field

    def to_dict(self) -> dict[str, str]:
        """Return the error as a plain ``{"code", "message"[, "field"]}`` dict."""
        out = {"code": self.code, "message": self.detail}
        if self.field is not None:
            out["field"] = self.field
        return out


class InvalidRequest(OnnxplainError):
    """A request body, card, row or parameter is invalid."""

    code = "invalid_request"
    title = "Invalid request"


class UnknownField(InvalidRequest):
    """A JSON object carries a field that the contract does not define."""

    code = "unknown_field"
    title = "Unknown field"


class ModelRejected(OnnxplainError):
    """An uploaded ONNX model is unsafe, malformed or does not match its card."""

    code = "invalid_model"
    title = "Model rejected"


class Unauthorized(OnnxplainError):
    """The request carries no valid API key."""

    code = "unauthenticated"
    title = "Unauthorized"


class Forbidden(OnnxplainError):
    """The API key is valid but lacks the scope the call needs.

    Args:
        detail: What went wrong, for a person.
        code: Stable snake_case code.
        scope: The scope that was needed.
    """

    code = "insufficient_scope"
    title = "Forbidden"

    def __init__(self, detail: str, *, code: str | None = None, scope: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.scope = scope


class NotFound(OnnxplainError):
    """A named resource does not exist (or has expired)."""

    code = "not_found"
    title = "Not found"


class Conflict(OnnxplainError):
    """The resource's state forbids the operation."""

    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(OnnxplainError):
    """An upload or request body exceeds its configured size cap."""

    code = "payload_too_large"
    title = "Payload too large"


class Unavailable(OnnxplainError):
    """A dependency the call needs (Redis, the model store) is unreachable."""

    code = "unavailable"
    title = "Service unavailable"


class QueueFull(Unavailable):
    """A queue already holds its cap of waiting jobs; the client should retry after ``retry_after_s``.

    Args:
        detail: What went wrong, for a person.
        code: Stable snake_case code.
        retry_after_s: Seconds to wait before retrying.
    """

    code = "queue_full"
    title = "Queue full"

    def __init__(self, detail: str, *, code: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(detail, code=code)
        self.retry_after_s = retry_after_s


class JobCanceled(OnnxplainError):
    """A job stopped because it was canceled while running."""

    code = "canceled"
    title = "Canceled"


class JobRefused(OnnxplainError):
    """A queued job names a function that is not in the queue contract (``engine/jobs.py``); it never ran."""

    code = "job_refused"
    title = "Job refused"


class ExplanationFailed(OnnxplainError):
    """The model or an explainer failed on input that passed validation."""

    code = "explanation_failed"
    title = "Explanation failed"


class ModelLimitExceeded(ExplanationFailed):
    """A model call ran into the process's memory cap or its per-call time limit (the code names which)."""

    code = "model_memory_limit"
    title = "Model limit exceeded"
