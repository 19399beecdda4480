"""WebHandler: a meta-process that is also an aiohttp request handler.

Theory of operation
-------------------

aiohttp calls the handler in the connection's request task. The handler
reads the body (up to ``max_body``), builds a :class:`WebRequest`, and makes
an eager ``call`` to the worker (``Meta.call(..., eager=True)``): an idle
worker with a plain ``handle_call`` answers inside it, so the request costs
no loop turn for the worker and none to wake the request task; a busy one
gets a Caller appended to its mailbox and a deadline in the node's deadline
queue, in its turn. No Task of its own either way. The worker's
``handle_call`` answers with a value that becomes the response:

=====================================  ==========================================
``StreamResponse`` / ``Response``      as is (a prepared stream too)
``str``                                ``text/plain; charset=utf-8``
``bytes`` / ``bytearray``              ``application/octet-stream``
``dict`` / ``list``                    ``application/json``, encoded with orjson
``None``                               ``204 No Content``
=====================================  ==========================================

Failures map to status codes and never reach the client as a traceback:

=====================================  ==========================================
no live worker (or handler ended)      503
the worker's mailbox is full           503 with ``Retry-After``
no answer within ``timeout``           504; a coroutine ``handle_call`` still
                                       on it is cancelled (see below)
the worker ended before answering      503
``handle_call`` raised                 500, generic body; traceback in the log
body longer than ``max_body``          413, the worker is not bothered
body not in within ``body_timeout``    408 and close, the worker is not bothered
=====================================  ==========================================

A client that disconnects while waiting: with ``handler_cancellation=True``
(``WebServer`` sets it; pass it to your own ``AppRunner`` or ``run_app``),
aiohttp cancels the request task, which cancels the pending call: the worker
skips it if it has not started, and its answer is discarded otherwise.
Without it, aiohttp discards the response when it finds the client gone.

Either way (a 504, or a client gone) the call is withdrawn as any call
whose caller stops waiting is (``Process.call``): a coroutine
``handle_call`` still working on it gets ``CancelledError``, so one slow
request never makes the next request to the same worker time out too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import StreamReader, web

from .._compat import mark_coroutine_function
from ..errors import CallTimeout, MailboxFull, NoProcess, ProcessExited
from ..ids import PID
from ..meta import Meta
from ..pool import Pool
from .messages import WebRequest

__all__ = ["WebHandler", "WebHandlerStatistics", "to_response"]

_JSON = "application/json"


def _text(result: str) -> web.StreamResponse:
    return web.Response(text=result)


def _json(result: Any) -> web.StreamResponse:
    return web.Response(body=orjson.dumps(result), content_type=_JSON)


def _binary(result: bytes) -> web.StreamResponse:
    return web.Response(body=result, content_type="application/octet-stream")


def _empty(result: None) -> web.StreamResponse:
    return web.Response(status=204)


# The common answers by exact type: one dict lookup instead of an isinstance chain.
_CONVERT: dict[type, Any] = {
    str: _text,
    dict: _json,
    list: _json,
    bytes: _binary,
    type(None): _empty,
}


def to_response(result: Any) -> web.StreamResponse:
    """Turn a worker's answer into an aiohttp response (see the table above).

    Raises:
        TypeError: for any other type of answer.
    """
    convert = _CONVERT.get(result.__class__)
    if convert is not None:
        return convert(result)  # type: ignore[no-any-return]
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, str):
        return web.Response(text=result)
    if isinstance(result, bytes | bytearray):
        return web.Response(body=result, content_type="application/octet-stream")
    if isinstance(result, dict | list):
        return web.Response(body=orjson.dumps(result), content_type=_JSON)
    raise TypeError(f"cannot make an HTTP response of {type(result).__name__}: {result!r:.80}")


def _error(status: int, retry_after: int | None = None) -> web.Response:
    # A generic body: what went wrong stays in the log, not in the response.
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(
        status=status, text=f"{status} {HTTPStatus(status).phrase}", headers=headers
    )


@dataclass(frozen=True, slots=True)
class WebHandlerStatistics:
    """A web handler's counters at one moment (``handler.statistics()``).

    Attributes:
        requests: requests received.
        unavailable: answered 503: no live worker, a full mailbox, the
            worker ended first, or the handler not running.
        timed_out: answered 504: no answer within ``timeout``.
        failed: answered 500: ``handle_call`` raised, or its answer was not
            a response.
        too_large: answered 413: the body was longer than ``max_body``.
        body_timed_out: answered 408: the body was not all in within
            ``body_timeout``.
    """

    requests: int
    unavailable: int
    timed_out: int
    failed: int
    too_large: int
    body_timed_out: int


class WebHandler(Meta):
    """Mount on any route of any aiohttp app; each request becomes a ``call``.

    ::

        handler = WebHandler("api", timeout=5.0)
        await self.spawn_meta(handler)                  # in some process's init
        app.router.add_route("*", "/{tail:.*}", handler)

    Args:
        worker: the name or PID of the process whose ``handle_call`` answers.
        pool: instead of ``worker``, names or PIDs answered round-robin per
            request (dead ones are skipped).
        timeout: seconds to wait for an answer before a 504.
        max_body: the largest request body read, in bytes; longer gets 413.
        body_timeout: seconds for the whole body to arrive, counted from when
            the handler starts reading it (its headers are in); a body still
            coming then gets 408 with ``Connection: close``, however steadily
            its bytes trickle in. None for no deadline. After the 408,
            aiohttp reads and drops what still comes for up to its
            ``lingering_time`` (10 s) before it closes, so that the client
            reads the 408 rather than a reset.

    Resource handling:
        The handler answers 503 until it is spawned and after it ends. It
        holds no socket: the app's runner (``WebServer``, or yours) does.
    """

    def __init__(
        self,
        worker: PID | str | None = None,
        *,
        pool: Sequence[PID | str] | None = None,
        timeout: float = 5.0,
        max_body: int = 1 << 20,
        body_timeout: float | None = 30.0,
    ) -> None:
        if body_timeout is not None and body_timeout <= 0:
            raise ValueError(f"body_timeout must be positive or None, not {body_timeout!r}")
        self._workers = Pool(worker, pool, required=True)
        mark_coroutine_function(self)  # aiohttp takes it as an async handler
        self.timeout = timeout
        self.max_body = max_body
        self.body_timeout = body_timeout
        self._requests = self._unavailable = self._timed_out = self._failed = self._too_large = 0
        self._body_timed_out = 0

    async def _read_body(self, request: web.BaseRequest) -> bytes | None:
        """The body (the request has one), or None if it is longer than ``max_body``.

        Raises:
            TimeoutError: not all in within ``body_timeout``.
        """
        length = request.content_length
        if length is not None and length > self.max_body:
            return None
        content = request.content
        # A body that came with its headers is read without a timer.
        if content.is_eof() or self.body_timeout is None:
            return await self._read_chunks(content)
        async with asyncio.timeout(self.body_timeout):
            return await self._read_chunks(content)

    async def _read_chunks(self, content: StreamReader) -> bytes | None:
        chunks = []
        size = 0
        async for chunk in content.iter_any():
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Handle one request (aiohttp calls this)."""
        self._requests += 1
        if not self.alive:  # not spawned yet, or ended
            self._unavailable += 1
            return _error(503)
        if request.body_exists:
            try:
                body = await self._read_body(request)
            except TimeoutError:
                self._body_timed_out += 1
                response = _error(408)
                # RFC 9110 §15.5.9: the server has decided to close.
                response.force_close()
                return response
            if body is None:
                self._too_large += 1
                return _error(413)
        else:
            body = b""
        worker = self._workers.pick(self)
        if worker is None:
            self._unavailable += 1
            return _error(503)
        try:
            # Eager: an idle worker answers inside this call, and the request
            # task yields anyway when it writes the response.
            future = self.call(worker, WebRequest(request, body), self.timeout, eager=True)
        except NoProcess:
            self._unavailable += 1
            return _error(503)
        except MailboxFull:
            self._unavailable += 1
            return _error(503, retry_after=1)
        try:
            result = await future
        except CallTimeout:
            self._timed_out += 1
            return _error(504)
        except ProcessExited:
            self._unavailable += 1
            return _error(503)
        except Exception as exc:
            self._failed += 1
            self.log.error(
                "%s %s: the worker's handle_call raised",
                request.method,
                request.path_qs,
                exc_info=exc,
            )
            return _error(500)
        try:
            return to_response(result)
        except TypeError as exc:
            self._failed += 1
            self.log.error("%s %s: %s", request.method, request.path_qs, exc)
            return _error(500)

    def statistics(self) -> WebHandlerStatistics:
        """A snapshot of the counters."""
        return WebHandlerStatistics(
            requests=self._requests,
            unavailable=self._unavailable,
            timed_out=self._timed_out,
            failed=self._failed,
            too_large=self._too_large,
            body_timed_out=self._body_timed_out,
        )

    def handle_inspect(self) -> dict[str, str]:
        """The counters, the workers and the timeout."""
        info = super().handle_inspect()
        info["workers"] = repr(self._workers)
        info["timeout"] = str(self.timeout)
        return info
