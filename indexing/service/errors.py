"""What a request did wrong (or what the service cannot give) -> a status and a one-line message."""

from __future__ import annotations


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status`` (4xx for the caller's mistakes)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.headers = headers or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


class NotReady(ApiError):
    """No index version is loaded yet."""

    def __init__(self) -> None:
        super().__init__(
            503, "no index version is loaded yet; try again shortly", {"Retry-After": "1"}
        )
