"""The request a WebHandler hands to its worker's ``handle_call``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web
    from multidict import CIMultiDictProxy, MultiMapping

__all__ = ["WebRequest"]


@dataclass(frozen=True, slots=True)
class WebRequest:
    """One HTTP request, as a value the worker can ``match`` on::

        match request:
            case WebRequest(method="GET", path="/hello"):
                return {"hello": request.query.get("name", "world")}

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

    method: str
    path: str
    query: MultiMapping[str]
    headers: CIMultiDictProxy[str]
    body: bytes
    match_info: Mapping[str, str]
    remote: str | None
    request: web.BaseRequest

    def json(self) -> Any:
        """The body decoded as JSON (orjson); raises ``orjson.JSONDecodeError``."""
        import orjson

        return orjson.loads(self.body)
