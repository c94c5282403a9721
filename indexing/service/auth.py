"""A request's bearer header or imgindex_token cookie + the service token -> allowed, or a 401."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from indexing.service.errors import ApiError

COOKIE = "imgindex_token"


def presented_tokens(conn: HTTPConnection) -> list[str]:
    """The tokens a request carries: the bearer header's, then the cookie's."""
    found = []
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found.append(value.strip())
    cookie = conn.cookies.get(COOKIE)
    if cookie:
        found.append(cookie)
    return found


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (of the UTF-8 bytes, so any text compares safely)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def check_token(conn: HTTPConnection, expected: str | None) -> None:
    """Raise a 401 ApiError unless ``expected`` is None or the request carries it."""
    if expected is None:
        return
    given = presented_tokens(conn)
    # Compare every presented token, so the time taken does not tell which one was wrong.
    if not any([token_matches(token, expected) for token in given]):
        what = "a wrong token" if given else "no token"
        raise ApiError(
            401,
            f"this service needs a token and the request carried {what}: send "
            f"'Authorization: Bearer TOKEN' or the cookie {COOKIE}=TOKEN",
            {"WWW-Authenticate": 'Bearer realm="imgindex"'},
        )
