"""Who may talk to the UI: the token, cross-site request and DNS-rebinding checks.

One ASGI middleware in front of the whole app:

- Host: when the UI listens on a loopback address the ``Host`` header must name a loopback
  host (``127.0.0.1``, ``localhost``, ``[::1]``), so a rebound DNS name cannot reach it.
- Token (when one is set, printable ASCII): every ``/api/`` request carries
  ``Authorization: Bearer TOKEN``; a GET may pass ``?token=TOKEN`` instead (download links).
  Both are compared as bytes, in constant time. The page itself is public.
- Cross-site requests: a mutating request (any method but GET, HEAD, OPTIONS) must send
  ``Content-Type: application/json`` (else 415, code ``unsupported_media_type``) and the
  header ``X-Requested-By: restate-redis`` (neither can be sent cross-site without a CORS
  preflight, which this app never grants), and is refused when ``Sec-Fetch-Site`` is
  ``cross-site`` or ``same-site`` or when ``Origin`` is not this server's own origin.
- Every response carries a strict Content-Security-Policy (scripts only from this server,
  no inline scripts) and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_HEADER = "x-requested-by"
CSRF_VALUE = "restate-redis"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    """True for a loopback host name or address (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:9071
        return host_header[: host_header.find("]") + 1]
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


def check_token(token: str) -> bytes:
    """The token as the bytes requests must carry; ValueError unless it is printable ASCII
    (it travels in an HTTP header, where anything else has no single encoding)."""
    if not token.isascii() or not token.isprintable():
        raise ValueError(
            "the token must be printable ASCII (letters, digits, punctuation): it is sent in "
            "an HTTP header"
        )
    return token.encode("ascii")


_CODES = {401: "unauthorized", 415: "unsupported_media_type"}


class Guard:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp, *, token: str | None, loopback_only: bool) -> None:
        self.app = app
        self.token = token or None
        self._token = check_token(token) if token else None
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = {k.lower(): v for k, v in scope["headers"]}
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw.items()}
        refusal = self._check(scope, headers, raw)
        if refusal is not None:
            status, message = refusal
            await _json(send, status, {"error": message, "code": _CODES.get(status, "forbidden")})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _given_token(self, scope: Scope, raw: dict[bytes, bytes]) -> bytes:
        """The token a request carries, as bytes: compared as bytes, so any header or query
        encoding is simply a wrong token, never an error."""
        auth = raw.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            return auth[7:].strip()
        if scope["method"].upper() in SAFE_METHODS:
            for pair in scope.get("query_string", b"").split(b"&"):
                name, _, value = pair.partition(b"=")
                if unquote_to_bytes(name.replace(b"+", b" ")) == b"token":
                    return unquote_to_bytes(value.replace(b"+", b" "))
        return b""

    def _check(
        self, scope: Scope, headers: dict[str, str], raw: dict[bytes, bytes]
    ) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.loopback_only and not is_loopback(_host_name(host)):
            return 403, f"host {host!r} is not a loopback name (DNS rebinding protection)"
        method = scope["method"].upper()
        path: str = scope["path"]
        if (
            self._token is not None
            and path.startswith("/api/")
            and not secrets.compare_digest(self._given_token(scope, raw), self._token)
        ):
            return 401, "missing or wrong token"
        if method not in SAFE_METHODS:
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return 415, "a change must be sent as application/json"
            if headers.get(CSRF_HEADER) != CSRF_VALUE:
                return 403, f"a change must carry the header {CSRF_HEADER}: {CSRF_VALUE}"
            if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return 403, "cross-site request refused"
            origin = headers.get("origin")
            scheme = scope.get("scheme", "http")
            if origin is not None and origin != f"{scheme}://{host}":
                return 403, f"cross-origin request from {origin!r} refused"
        return None


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
