"""The observer's door: every request's token, Host and Origin, checked first.

One aiohttp middleware in front of every route (the page, its files, the
stream, the actions, and the 404s):

1. with a token, a request without it or with a wrong one gets 401. The
   token comes as ``?token=``, as ``Authorization: Bearer``, or as the
   cookie the page's own response sets (``HttpOnly``, ``SameSite=Strict``),
   so that the page's files and stream carry it without the token being
   written into them. Compared with ``hmac.compare_digest``.
2. bound to a loopback address, a request whose ``Host`` is not a loopback
   name gets 403: a web page that rebinds its own domain name to 127.0.0.1
   (DNS rebinding) is then still another host.
3. the stream and every request that is not a GET or HEAD must come from
   the page itself: an ``Origin`` (or ``Sec-Fetch-Site``) saying another
   site or another port gets 403 — a browser sends them on its own and a
   page cannot forge them. A client without them is not a browser page.

Every response also says what the page may load (its own files only), that
it must not be framed, sniffed, cached or leak its URL as a referrer.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = ["CSP", "guard", "is_loopback", "secure_headers"]

# Its own files only: text slipping into the page can run no script and send
# nowhere. 'self' in connect-src covers ws: to the same host and port (CSP Level 3).
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the page's URL carries the token
    "Cache-Control": "no-store",
}
_SAFE = frozenset(("GET", "HEAD"))
_FETCH_SITES = frozenset(("same-origin", "none"))  # "same-site" is another port too


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, no port) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    """The name in a ``Host`` header, without its port."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _presented(request: web.Request, cookie: str) -> tuple[str | None, bool]:
    """The token a request carries, and whether it came in the query."""
    query = request.query.get("token")
    if query is not None:
        return query, True
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip(), False
    return request.cookies.get(cookie), False


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is not None:
        expected = f"{request.scheme}://{request.host}"
        return hmac.compare_digest(origin.lower().encode(), expected.lower().encode())
    site = request.headers.get("Sec-Fetch-Site")
    return site is None or site in _FETCH_SITES


def _refuse(status: int, text: str) -> web.Response:
    response = web.Response(status=status, text=f"{status} {text}")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="metakit observer"'
    return response


def guard(*, token: str | None, cookie: str, loopback: bool, stream: str) -> Middleware:
    """The middleware (see the module docstring).

    Args:
        token: the token every request needs, or None.
        cookie: the cookie's name (one per observer: cookies do not tell ports apart).
        loopback: the server is bound to a loopback address: check ``Host``.
        stream: the stream's path (checked for its origin, though a GET).
    """
    secret = token.encode() if token is not None else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        from_query = False
        if secret is not None:
            presented, from_query = _presented(request, cookie)
            try:
                good = presented is not None and hmac.compare_digest(presented.encode(), secret)
            except UnicodeEncodeError:
                good = False
            if not good:
                return _refuse(401, "Unauthorized: this observer needs its token")
        if loopback and not is_loopback(_hostname(request.host)):
            return _refuse(403, "Forbidden: not a loopback host name")
        if (request.method not in _SAFE or request.path == stream) and not _same_origin(request):
            return _refuse(403, "Forbidden: cross-origin request")
        response = await handler(request)
        if from_query and token is not None and not response.prepared:
            # What lets the page's files and stream in without the token in their URLs.
            response.set_cookie(
                cookie, token, httponly=True, samesite="Strict", path="/", secure=request.secure
            )
        return response

    return middleware


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the headers every response carries (see above)."""
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
