"""The request a WebHandler hands to its worker's ``handle_call``, and the
messages of a Server-Sent Events stream (``SSEHandler``)::

    SSEConnect(conn, request, last_event_id)    once, first
    SSEEvent(conn, data, event, id, retry)      written by the worker, in order
    SSEDisconnect(conn, reason)                 exactly once, last
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..ids import Alias

if TYPE_CHECKING:
    from aiohttp import web
    from multidict import CIMultiDictProxy, MultiMapping

__all__ = ["SSEConnect", "SSEDisconnect", "SSEEvent", "WebRequest"]


class WebRequest:
    """One HTTP request, as a read-only value the worker can ``match`` on::

        match request:
            case WebRequest(method="GET", path="/hello"):
                return {"hello": request.query.get("name", "world")}

    Only the body and the aiohttp request are stored; the other attributes
    read the aiohttp request when asked (building them all for every request
    cost more than the hop to the worker). Do not keep it past the answer:
    the aiohttp request it wraps belongs to that request.

    Attributes:
        method: ``"GET"``, ``"POST"``...
        path: the URL path, decoded (``"/users/7"``).
        query: the query string's parameters (a read-only multidict).
        headers: the request headers (a read-only, case-insensitive multidict).
        body: the body, read in full (``b""`` when there is none).
        match_info: the route's path parameters (``{"id": "7"}``).
        remote: the client's address, or None.
        request: the underlying ``aiohttp.web.Request``, for streaming use
            (prepare a ``StreamResponse`` on it and return that).
    """

    __slots__ = ("body", "request")
    __match_args__ = ("method", "path", "query", "headers", "body", "match_info", "remote")

    def __init__(self, request: web.BaseRequest, body: bytes = b"") -> None:
        self.request = request
        self.body = body

    @property
    def method(self) -> str:
        """The HTTP method."""
        return self.request.method

    @property
    def path(self) -> str:
        """The URL path, decoded."""
        return self.request.path

    @property
    def query(self) -> MultiMapping[str]:
        """The query string's parameters."""
        return self.request.query

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The request headers."""
        return self.request.headers

    @property
    def match_info(self) -> Mapping[str, str]:
        """The route's path parameters (empty outside a routed app)."""
        return getattr(self.request, "match_info", None) or {}

    @property
    def remote(self) -> str | None:
        """The client's address, or None."""
        return self.request.remote

    def json(self) -> Any:
        """The body decoded as JSON (orjson); raises ``orjson.JSONDecodeError``."""
        import orjson

        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"<WebRequest {self.method} {self.request.path_qs} ({len(self.body)} bytes)>"


@dataclass(frozen=True, slots=True)
class SSEConnect:
    """A client has opened an event stream.

    Attributes:
        conn: the stream's Alias; send it ``SSEEvent`` to write.
        request: the request that opened it (do not keep it past the stream).
        last_event_id: the ``Last-Event-ID`` a reconnecting ``EventSource``
            sends: the ``id`` of the last event it received, or None.
    """

    conn: Alias
    request: WebRequest
    last_event_id: str | None


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One event to write on a stream (the worker sends it to ``conn``).

    Attributes:
        conn: the stream's Alias.
        data: what to send: encoded as JSON with ``codec="json"`` (a ``str``
            too), else a ``str`` sent as it is, one ``data:`` line per line
            (split on CR, LF and CRLF).
        event: the event's type (``EventSource.addEventListener(event)``), or
            None for ``message``.
        id: the event's id, which the browser sends back as
            ``Last-Event-ID`` when it reconnects, or None.
        retry: milliseconds the browser waits before reconnecting, or None.

    Raises:
        ValueError: ``event`` or ``id`` holds a CR, LF or NUL (they would
            end the field on the wire: an injected line), or ``retry`` is not
            a whole number >= 0.
    """

    conn: Alias
    data: Any
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def __post_init__(self) -> None:
        for name in ("event", "id"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, str) or "\r" in value or "\n" in value or "\0" in value
            ):
                raise ValueError(f"an SSE {name} is a str without CR, LF or NUL, not {value!r}")
        retry = self.retry
        if retry is not None and (
            isinstance(retry, bool) or not isinstance(retry, int) or retry < 0
        ):
            raise ValueError(f"an SSE retry is a whole number of milliseconds >= 0, not {retry!r}")


@dataclass(frozen=True, slots=True)
class SSEDisconnect:
    """The stream has ended; writes to it are dropped (and counted).

    Attributes:
        conn: the stream's Alias.
        reason: ``"closed"`` (the client went: seen by a heartbeat or a
            failed write), ``"normal"`` (you sent ``send_exit(conn,
            "normal")``), ``"shutdown"``, ``"kill"``, or an exception.
    """

    conn: Alias
    reason: Any
