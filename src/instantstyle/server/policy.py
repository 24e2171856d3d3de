"""Who may reach what: the request policy in front of every route (HTTP API, web UI, docs).

One pure ASGI middleware, ``RequestPolicy``, runs before any route or framework code:

1. **Host allow-list**: the ``Host`` header must name this server (localhost names and the bind
   address by default; ``--allowed-host`` for a reverse proxy's public name). This stops DNS
   rebinding: a page on ``evil.example`` that re-points its name at 127.0.0.1 still sends
   ``Host: evil.example``.
2. **Origin**: a request a browser marks as cross-site (``Origin`` of another site, or
   ``Sec-Fetch-Site: cross-site``) may not change state (POST, PUT, PATCH, DELETE) unless its
   origin is in ``--allowed-origin``. CORS is off unless origins are configured; then only those
   origins get CORS headers (Gradio's own permissive ones are removed for everyone else).
3. **API key**: with a key set, every route needs it (``Authorization: Bearer KEY`` or
   ``X-API-Key: KEY``), or, under the UI's path, the UI's login cookie; only the health check
   (``/v1/health``, reduced to its status) and what the UI's login page needs are open. Failed
   key and login attempts are counted per client address: past ``max_failures`` in
   ``failure_window_s`` that client gets 429 until the window has passed.
4. **No client names a server file** in the UI: Gradio file descriptors in a UI request's JSON
   body must point inside Gradio's own upload folder (``check_upload_descriptor``), and Gradio's
   file routes serve nothing else. A hostile descriptor gets 400 and is never copied or read.

``BodySizeLimit`` (inside it, in front of the ``/v1`` routes) refuses a body over the limit
before anything parses it.

Every refusal is the API's one error shape, ``{"error": {"status", "code", "message"}}``, and no
message names a server path.
"""

from __future__ import annotations

import hmac
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders

from .http_errors import error_response
from .limits import FailedAuthLimiter

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
HEALTH_PATH = "/v1/health"
MAX_UI_JSON_BYTES = 4 * 1024 * 1024  # a UI event's JSON (values and file descriptors, never file bytes)
# What the UI's login page loads before anyone has logged in (GET, under the UI's path).
_UI_LOGIN_PAGES = (
    "",
    "/",
    "/login",
    "/login/",
    "/config",
    "/config/",
    "/theme.css",
    "/favicon.ico",
    "/manifest.json",
    "/robots.txt",
    "/gradio_api/theme.css",
)
_UI_LOGIN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
_UI_FILE_ROUTES = (
    "/gradio_api/file=",
    "/gradio_api/file/",
    "/file=",
    "/file/",
    "/gradio_api/proxy=",
    "/proxy=",
)


def api_key_ok(headers, api_key: str) -> bool:
    """``X-API-Key: KEY`` or ``Authorization: Bearer KEY``, compared in constant time."""
    given = presented_key(headers)
    return given is not None and hmac.compare_digest(given.encode(), api_key.encode())


def presented_key(headers) -> str | None:
    """The key a request carries (X-API-Key, or a Bearer token), or None when it carries none."""
    given = headers.get("x-api-key")
    if given is None:
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    return given


def default_allowed_hosts(bind_host: str) -> list[str]:
    """Localhost names and the bind address; for a wildcard bind, this machine's name and addresses."""
    hosts = [*LOCAL_HOSTS]
    if bind_host in ("0.0.0.0", "::", ""):
        name = socket.gethostname()
        hosts.append(name)
        try:
            hosts += socket.gethostbyname_ex(name)[2]
        except OSError:
            pass
    else:
        hosts.append(bind_host)
    return sorted({h.lower().strip("[]") for h in hosts})


def host_name(host_header: str) -> str:
    """``Host`` header -> lowercased host name without port (``[::1]:7860`` -> ``::1``)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


@dataclass
class Policy:
    """The settings ``RequestPolicy`` enforces (``serve`` flags: --allowed-host, --allowed-origin, --api-key)."""

    api_key: str | None = None
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOCAL_HOSTS))  # "*" allows any
    allowed_origins: list[str] = field(default_factory=list)  # cross-origin callers (CORS); none by default
    ui_path: str = "/ui"
    upload_dirs: list[str] = field(
        default_factory=list
    )  # where UI file descriptors may point (Gradio's uploads)
    limiter: FailedAuthLimiter = field(default_factory=FailedAuthLimiter)
    # Set by ``mount_ui``: the UI's login cookie names and its live login tokens (Gradio's app.tokens).
    ui_cookie_names: tuple[str, ...] = ()
    ui_tokens: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.allowed_hosts = [h if h == "*" else host_name(h) for h in self.allowed_hosts]
        self.allowed_origins = [o.rstrip("/").lower() for o in self.allowed_origins]
        for origin in self.allowed_origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path):
                from ..errors import InstantStyleError

                raise InstantStyleError(
                    f"--allowed-origin {origin!r}: give scheme://host[:port], e.g. https://app.example.com"
                )

    def host_allowed(self, host_header: str | None) -> bool:
        return "*" in self.allowed_hosts or (
            host_header is not None and host_name(host_header) in self.allowed_hosts
        )

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allowed_origins or origin.rstrip("/").lower() in self.allowed_origins


def same_origin(origin: str, host_header: str | None) -> bool:
    parts = urlsplit(origin)
    return (
        bool(host_header)
        and parts.scheme in ("http", "https")
        and parts.netloc.lower() == host_header.lower()
    )


def inside(path: str, directories: Iterable[str]) -> bool:
    """``path`` (after resolving symlinks and ``..``) lies inside one of ``directories``."""
    if not isinstance(path, str) or not path or "\x00" in path:
        return False
    real = os.path.realpath(os.path.abspath(path))
    for d in directories:
        root = os.path.realpath(d)
        try:
            if os.path.commonpath([real, root]) == root and real != root:
                return True
        except ValueError:
            continue
    return False


def check_upload_descriptors(data, upload_dirs: list[str]) -> bool:
    """True when every Gradio file descriptor (a dict with a ``path``) in ``data`` points inside
    ``upload_dirs``; URLs, other paths and symlinks out of them are refused."""
    stack = [data]
    seen = 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > 100_000:
            return False
        if isinstance(value, dict):
            if (
                "path" in value
                and value.get("path") is not None
                and not inside(value.get("path"), upload_dirs)
            ):
                return False
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return True


class RequestPolicy:
    """Pure ASGI middleware enforcing a ``Policy`` on every HTTP and WebSocket request."""

    def __init__(self, app, policy: Policy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        p = self.policy
        headers = Headers(scope=scope)
        method = scope.get("method", "GET").upper()
        path = scope.get("path", "")

        async def refuse(status: int, code: str, message: str, extra: dict | None = None):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await error_response(status, message, code=code, headers=extra)(scope, receive, send)

        # 1. Host: the name the client used must be this server's
        if not p.host_allowed(headers.get("host")):
            return await refuse(
                400,
                "bad_host",
                "this server does not answer to that Host name; if it is yours "
                "(a reverse proxy's public name), start the server with --allowed-host NAME",
            )
        # 2. Origin: cross-site requests change nothing, unless the operator allowed their origin
        origin = headers.get("origin")
        cross = (origin is not None and not same_origin(origin, headers.get("host"))) or (
            origin is None and headers.get("sec-fetch-site") == "cross-site"
        )
        allowed_origin = origin is not None and p.origin_allowed(origin)
        preflight = method == "OPTIONS" and "access-control-request-method" in headers
        if (
            cross
            and not allowed_origin
            and (method in UNSAFE_METHODS or preflight or scope["type"] == "websocket")
        ):
            return await refuse(
                403,
                "cross_origin",
                "cross-origin request refused: this server only takes "
                "state-changing requests from its own pages (operators: --allowed-origin ORIGIN)",
            )
        if preflight and cross and allowed_origin:
            return await self._preflight(scope, receive, send, origin, headers)

        # 3. The API key (or the UI's login cookie) on everything but the health check and the login page
        client = (scope.get("client") or ("?", 0))[0]
        in_ui = path == p.ui_path or path.startswith(p.ui_path + "/")
        sub = path[len(p.ui_path) :] if in_ui else None
        login_post = in_ui and method == "POST" and sub in ("/login", "/login/")
        if p.api_key:
            wait = p.limiter.blocked_for(client)
            if wait and (login_post or presented_key(headers) is not None):
                return await refuse(
                    429,
                    "too_many_attempts",
                    f"too many failed key or login attempts from this address; wait {wait} s",
                    {"Retry-After": str(wait)},
                )
            if not self._authorised(headers, in_ui, sub, method, path, login_post):
                if presented_key(headers) is not None:
                    p.limiter.fail(client)
                return await refuse(
                    401,
                    "unauthorized",
                    "missing or wrong API key; send 'Authorization: Bearer "
                    "KEY' or 'X-API-Key: KEY' (the web UI asks for it as its password)",
                    {"WWW-Authenticate": "Bearer"},
                )
        # 4. UI requests: file descriptors only into the upload folder; file routes only from it
        if in_ui and scope["type"] == "http":
            route = next((r for r in _UI_FILE_ROUTES if sub.startswith(r)), None)
            if route is not None and ("proxy" in route or not inside(sub[len(route) :], p.upload_dirs)):
                # (the ASGI path is already percent-decoded, as Gradio's route sees it)
                return await refuse(
                    403,
                    "forbidden",
                    "file not available: the UI serves only this server's uploads and results",
                )
            if method in UNSAFE_METHODS and "json" in (headers.get("content-type") or ""):
                body = await _read_body(receive, MAX_UI_JSON_BYTES)
                if body is None:
                    return await refuse(413, "too_large", f"UI request over {MAX_UI_JSON_BYTES} bytes")
                try:
                    data = json.loads(body) if body else None
                except ValueError:
                    data = None  # Gradio answers malformed JSON itself
                if not check_upload_descriptors(data, p.upload_dirs):
                    return await refuse(
                        400,
                        "bad_request",
                        "a file in this request is not one uploaded to this "
                        "server; upload the image (a request never names a server file)",
                    )
                receive = _replay(body, receive)
        send = self._wrap_send(send, origin if cross and allowed_origin else None, login_post, client)
        return await self.app(scope, receive, send)

    def _authorised(
        self, headers, in_ui: bool, sub: str | None, method: str, path: str, login_post: bool
    ) -> bool:
        p = self.policy
        if api_key_ok(headers, p.api_key):
            return True
        if path in (HEALTH_PATH, HEALTH_PATH + "/") and method in ("GET", "HEAD"):
            return True  # the route itself answers only its status without the key
        if not in_ui:
            return False
        if login_post or (
            method in ("GET", "HEAD") and (sub in _UI_LOGIN_PAGES or sub.startswith(_UI_LOGIN_PREFIXES))
        ):
            return True  # the login page and its assets (Gradio answers /config with 401 until logged in)
        cookies = _cookies(headers)
        return any(cookies.get(name) in p.ui_tokens for name in p.ui_cookie_names)

    def _wrap_send(self, send, cors_origin: str | None, login_post: bool, client: str):
        limiter = self.policy.limiter if self.policy.api_key else None

        async def wrapped(message):
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                for name in (
                    "access-control-allow-origin",
                    "access-control-allow-credentials",
                    "access-control-allow-methods",
                    "access-control-allow-headers",
                ):
                    if name in h:
                        del h[name]  # Gradio's CORS allows any localhost origin with credentials; we decide
                if cors_origin:
                    h["Access-Control-Allow-Origin"] = cors_origin
                    h.add_vary_header("Origin")
                if login_post and limiter is not None and message["status"] >= 400:
                    limiter.fail(client)
            await send(message)

        return wrapped

    async def _preflight(self, scope, receive, send, origin: str, headers):
        from starlette.responses import Response

        response = Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, X-API-Key, Content-Type",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Pure ASGI, in front of every ``/v1`` route: the body size, BEFORE any parsing (Host, Origin
    and the key are checked further out, by ``RequestPolicy``).

    Declared bodies over the limit are refused from ``Content-Length``; a streamed body is
    counted as it arrives and cut off with 413 once over the limit.
    """

    def __init__(self, app, *, max_body_bytes: int, prefix: str = "/v1/"):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body_bytes:
            return await self._too_large(scope, receive, send, int(length))

        state = {"seen": 0, "over": False, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_body_bytes:
                    state["over"] = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            if state["over"]:  # whatever the app answers to a cut-off body, the client gets 413
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._too_large(scope, receive, send, state["seen"])
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            if not state["started"]:
                await self._too_large(scope, receive, send, state["seen"])

    async def _too_large(self, scope, receive, send, size: int):
        response = error_response(
            413,
            f"request body is {size}+ bytes, over the limit of {self.max_body_bytes} "
            "bytes; send fewer or smaller images (server flags --max-upload-bytes, "
            "--max-style-images)",
        )
        await response(scope, receive, send)


def _cookies(headers) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie") or "")
    except Exception:
        return {}
    return {k: v.value for k, v in jar.items()}


async def _read_body(receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


__all__ = [
    "Policy",
    "RequestPolicy",
    "BodySizeLimit",
    "api_key_ok",
    "default_allowed_hosts",
    "check_upload_descriptors",
    "inside",
]
