"""The one error root of zitops.

Every error a user can cause or fix is a :class:`ZitopsError`. The CLI prints
its message as one red line and exits with ``exit_code``; the HTTP layer maps
it to a JSON 4xx with ``http_status``. Anything else that escapes is a bug.
"""

from __future__ import annotations


class ZitopsError(Exception):
    """Base class: a message that says what is wrong and what to do."""

    exit_code: int = 1
    http_status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        # One line, always: a newline in a message would break log lines and
        # the CLI's single-line contract.
        return " ".join(self.message.split("\n"))


class ProfileError(ZitopsError):
    """A profile file, a built-in profile name or a --set override is invalid."""


class ConfigError(ZitopsError):
    """The agent's config file is missing or invalid."""


class RenderError(ZitopsError):
    """A deployment could not be rendered or written."""


class ModelError(ZitopsError):
    """Model weights are missing, partial or unreadable."""

    http_status = 503


class InvalidRequest(ZitopsError):
    """A generation request asks for something that is not allowed."""

    http_status = 422


class EngineError(ZitopsError):
    """Generation failed inside the engine."""

    http_status = 500


class OutOfMemory(EngineError):
    """A single image does not fit in device memory."""

    http_status = 507


class QueueFull(ZitopsError):
    """The bounded queue is at its cap; the client should retry later."""

    http_status = 429

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(ZitopsError):
    """A job or image that does not exist (or has expired)."""

    http_status = 404


class Conflict(ZitopsError):
    """The request is valid but the resource is in the wrong state."""

    http_status = 409


class Unauthorized(ZitopsError):
    """A bearer token is missing or wrong."""

    http_status = 401


class AgentUnavailable(ZitopsError):
    """The agent is draining, not ready, or cannot be reached."""

    http_status = 503


class StoreUnavailable(ZitopsError):
    """The shared job store (PostgreSQL) cannot be reached or used; the agent admits no new work."""

    http_status = 503


class JobCancelled(ZitopsError):
    """A running job was cancelled between two denoising steps (DELETE /v1/jobs/{id})."""

    http_status = 409


class DiskFull(StoreUnavailable):
    """The disk under the job store or the outputs is full, or below the free-space floor (disk.min_free_mib)."""

    http_status = 507
