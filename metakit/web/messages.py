"""The request a WebHandler hands to its worker's ``handle_call``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web
    from multidict import CIMultiDictProxy, MultiMapping

__all__ = ["WebRequest"]


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
