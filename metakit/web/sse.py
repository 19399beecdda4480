"""SSEHandler: Server-Sent Events on any aiohttp route, each stream a connection meta.

A thin adapter on :class:`metakit.connection.Connection` (which owns the
lifecycle and the back-pressure; read its theory of operation first), shaped
like the WebSocket handler: the handler is a meta and the aiohttp handler of
its route; each request it answers becomes an :class:`SSEConnection` meta
that the worker writes ``SSEEvent``\\ s to, and that ends with one
``SSEDisconnect``.

What is SSE's own:

* nothing is read after the request: the stream is one way. A client that
  goes away is seen when a write fails or, between events, by the
  heartbeat: a comment line (``:``) every ``heartbeat`` seconds that also
  keeps proxies from timing the stream out;
* aiohttp sends the headers in ``prepare``; after that an event on a
  chunked response (HTTP/1.1, uncompressed: always, here) is its chunk
  written straight to the transport, framed as aiohttp frames it (a
  ``broadcast`` frames it once for every stream). Past aiohttp's own drain
  threshold the stream drains through aiohttp's writer (``request.writer.drain``), driven by hand
  (:mod:`metakit._eager`), and holds its writes (``pause_writing``) until it
  has, so the stream's bounded mailbox pushes back on the worker with
  ``MailboxFull`` and a ``broadcast`` skips (and counts) a frozen client.
  Any other response (HTTP/1.0) writes with ``StreamResponse.write``;
* the response says ``Cache-Control: no-cache`` and ``X-Accel-Buffering:
  no`` (no proxy holds events back) and is never compressed (a compressor
  buffers);
* ``send_exit(conn, "normal")`` ends the response after the queued events;
  ``"shutdown"`` (``node.stop()``) first writes ``retry:`` so browsers come
  back a moment later, to whichever server is up then.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .._compat import mark_coroutine_function
from .._eager import Pump
from ..connection import Connection
from ..connections import ConnectionSet
from ..errors import MetakitError
from ..ids import PID
from ..meta import Meta
from ..pool import Pool
from .messages import SSEConnect, SSEDisconnect, SSEEvent, WebRequest

__all__ = ["SSEConnection", "SSEHandler", "SSEHandlerStatistics", "encode_event"]

_LINES = re.compile(r"\r\n|\r|\n")  # what ends a line in an event stream (and nothing else)
_HEARTBEAT = b":\n\n"
_DRAIN_AT = 0x10000  # buffered bytes past which aiohttp's own writer drains
_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx and the like: pass each event on at once
}


def encode_event(
    data: Any,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    *,
    json: bool = True,
) -> bytes:
    """One event as the bytes on the wire (its fields checked by ``SSEEvent``).

    Raises:
        TypeError: ``data`` is not JSON-encodable (``json``), or not a ``str``.
    """
    parts = []
    if event is not None:
        parts.append(b"event: " + event.encode())
    if id is not None:
        parts.append(b"id: " + id.encode())
    if retry is not None:
        parts.append(b"retry: %d" % retry)
    if json:
        text = orjson.dumps(data).decode()  # one line: JSON escapes its newlines
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(f"with codec=None an SSE data is a str, not {type(data).__name__}")
    parts.extend(b"data: " + line.encode() for line in _LINES.split(text))
    return b"\n".join(parts) + b"\n\n"


class SSEConnection(Connection):
    """One event stream as a meta-process; its Alias is the connection id.

    Made by :class:`SSEHandler`. The worker gets ``SSEConnect``, writes
    ``SSEEvent(conn, data, event=..., id=..., retry=...)``, and gets exactly
    one ``SSEDisconnect``.
    """

    __slots__ = (
        "_beat",
        "_direct",
        "_done",
        "_heartbeat",
        "_json",
        "_loop",
        "_nbytes",
        "_nevents",
        "_pump",
        "_request",
        "_response",
        "_writing",
        "prepare_key",
    )

    message_type = SSEEvent

    def __init__(
        self,
        response: web.StreamResponse,
        request: web.BaseRequest,
        *,
        codec: str | None = "json",
        heartbeat: float | None = 15.0,
    ) -> None:
        super().__init__()
        self._response = response
        self._request = request
        self._json = codec == "json"
        self.prepare_key = ("sse", codec)
        self._heartbeat = heartbeat
        self._beat: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[Any] | None = None
        self._pump = Pump()
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._nevents = 0  # written by handle_message below (writes_counted)
        self._nbytes = 0
        # The headers are out (prepare sent them): a chunked response's events can
        # go straight to the transport, framed as aiohttp would.
        transport = request.transport
        direct = (
            response.prepared
            and response.headers.get("Transfer-Encoding", "").lower() == "chunked"
            and "Content-Encoding" not in response.headers
        )
        self._direct: asyncio.Transport | None = transport if direct else None

    # -- the handler's side ----------------------------------------------------------

    async def _serve(self) -> None:
        """Hold aiohttp's request task until the stream has ended."""
        if self._heartbeat is not None:
            self._beat = self._loop.call_later(self._heartbeat, self._tick)
        await self._done

    def _tick(self) -> None:
        # The heartbeat: a comment keeps the stream alive through proxies, and a
        # client that has gone is seen here, between events.
        self._beat = None
        if not self.writable:
            return
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self._gone("closed")
            return
        self._send(_HEARTBEAT)
        if self.writable and self._heartbeat is not None:
            self._beat = self._loop.call_later(self._heartbeat, self._tick)

    def _gone(self, reason: Any) -> None:
        self.lost(reason)
        self._end_response()

    def _end_response(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    # -- the Connection hooks ----------------------------------------------------------

    def set_reading(self, on: bool) -> None:
        """Nothing is read from an event stream."""

    def close_transport(self, reason: Any, abort: bool) -> None:
        """End the response after the queued events (``retry:`` first on
        ``"shutdown"``), or drop the connection."""
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if abort:
            transport = self._request.transport
            if transport is not None:
                transport.abort()
            self._end_response()
            return
        self.create_task(self._finish(reason), name=f"metakit SSE close {self.id!r}")

    async def _finish(self, reason: Any) -> None:
        try:
            if self._writing is not None:
                await asyncio.wait_for(asyncio.shield(self._writing), 5.0)
            if reason == "shutdown":
                await self._response.write(b"retry: 1000\n\n")
            await self._response.write_eof()
        except Exception:  # the client has gone meanwhile, or never read: nothing to finish
            transport = self._request.transport
            if transport is not None:
                transport.abort()
        finally:
            self._end_response()

    def disconnect_message(self, reason: Any) -> SSEDisconnect:
        """``SSEDisconnect(conn, reason)``."""
        return SSEDisconnect(self.id, reason)

    # -- writing -----------------------------------------------------------------------

    def handle_message(self, sender: PID, message: Any) -> None:
        """Write ``SSEEvent(conn, ...)``, all its fields (anything else, and a write
        after the end, goes to Connection's ``handle_message``)."""
        if message.__class__ is SSEEvent and self.writable:
            payload = self._encode(message.data, message.event, message.id, message.retry)
            if payload is not None:
                self._nbytes += self._send(payload)
                self._nevents += 1
        else:
            super().handle_message(sender, message)

    def writes_counted(self) -> tuple[int, int]:
        """What :meth:`handle_message` wrote: ``(events, bytes)``."""
        return (self._nevents, self._nbytes)

    def write(self, data: Any) -> int:
        """Write an event with ``data`` only (what ``broadcast`` sends)."""
        payload = self._encode(data, None, None, None)
        return 0 if payload is None else self._send(payload)

    def prepare(self, data: Any) -> tuple[bytes, bytes] | None:
        """For a broadcast: the event, encoded (and chunk-framed) once for every
        stream of this codec."""
        try:
            payload = encode_event(data, json=self._json)
        except TypeError:
            return None  # each stream says so, and ends, in write()
        return payload, b"%x\r\n%s\r\n" % (len(payload), payload)

    def write_prepared(self, data: Any, prepared: Any) -> int:
        """For a broadcast: write the event ``prepare`` encoded."""
        if prepared is None:
            return self.write(data)
        transport = self._direct
        if transport is not None and self._writing is None:
            return self._send_chunk(transport, prepared[1], len(prepared[0]))
        return self._send(prepared[0])

    def _encode(self, data: Any, event: Any, id_: Any, retry: Any) -> bytes | None:
        try:
            return encode_event(data, event, id_, retry, json=self._json)
        except (TypeError, orjson.JSONEncodeError) as exc:
            # The worker's mistake: say so, and end rather than leave the client waiting.
            self.log.error("cannot send %r: %s", data, exc)
            self.finish(exc)
            return None

    def _send(self, payload: bytes) -> int:
        """Write encoded bytes; how many."""
        transport = self._direct
        if transport is not None and self._writing is None:
            return self._send_chunk(
                transport, b"%x\r\n%s\r\n" % (len(payload), payload), len(payload)
            )
        return self._drive(self._response.write(payload), len(payload))

    def _send_chunk(self, transport: asyncio.Transport, chunk: bytes, size: int) -> int:
        """Write one framed chunk of ``size`` event bytes to the transport; ``size``."""
        if transport.is_closing():
            self._gone("closed")
            return 0
        transport.write(chunk)
        if transport.get_write_buffer_size() > _DRAIN_AT:
            self._drive(self._request.writer.drain(), size)
        return size

    def _drive(self, write: Coroutine[Any, Any, None], size: int) -> int:
        """Run aiohttp's ``write`` or ``drain`` by hand; if the socket must drain,
        hold writes until it has. ``size``, or 0 if the client has gone."""
        try:
            pending = self._pump.run(write)
        except Exception:  # the client has gone
            self._gone("closed")
            return 0
        if pending is not None:
            self._writing = pending
            self.pause_writing()  # until the socket has drained
            pending.add_done_callback(self._written)
        return size

    def _written(self, task: asyncio.Task[Any]) -> None:
        self._writing = None
        if not task.cancelled() and task.exception() is not None:
            self._gone("closed")
        self.resume_writing()

    def terminate(self, reason: Any) -> None:
        """End the response (dropped on ``"kill"``) and send SSEDisconnect, each once."""
        super().terminate(reason)
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if reason == "kill":
            if self._writing is not None:
                self._writing.cancel()
            self._end_response()


@dataclass(frozen=True, slots=True)
class SSEHandlerStatistics:
    """An SSE handler's counters at one moment (``handler.statistics()``).

    Attributes:
        accepted: streams opened and served.
        no_worker: requests answered 503 because no worker was alive.
        refused_full: requests answered 503 at ``max_connections``.
        connections: streams open now.
    """

    accepted: int
    no_worker: int
    refused_full: int
    connections: int


class SSEHandler(Meta):
    """Mount on an aiohttp route; each request becomes an event stream, an
    :class:`SSEConnection` meta.

    ::

        sse = SSEHandler("feed")
        await self.spawn_meta(sse)
        app.router.add_get("/events", sse)

    The worker gets ``SSEConnect(conn, request, last_event_id)``, writes
    ``SSEEvent(conn, data, event=None, id=None, retry=None)``, and gets
    exactly one ``SSEDisconnect(conn, reason)``. ``broadcast(self, conns,
    data)`` writes one event to many streams, encoded once.

    Args:
        worker: the name or PID of the process that gets the messages.
        pool: instead of ``worker``, names or PIDs taken round-robin per stream.
        heartbeat: seconds between heartbeat comments (which also find
            clients that have gone); None: none.
        codec: ``"json"`` (every ``data`` encoded as JSON, a ``str`` too) or
            None (``data`` is a ``str``, sent as it is).
        max_connections: streams open at once; beyond it a request gets 503.
        mailbox_size: each stream's mailbox bound, at least 1: the events
            that wait while its client does not read. A full one raises
            ``MailboxFull`` at the worker writing to it; ``broadcast`` skips
            it and counts it in its ``dropped`` statistic.

    Resource handling:
        Streams are metas of this handler's parent. When the handler ends,
        its streams end with the same reason. ``node.stop()`` first ends
        them (with a ``retry:``) and refuses new ones, while the workers run.
    """

    def __init__(
        self,
        worker: PID | str | None = None,
        *,
        pool: Sequence[PID | str] | None = None,
        heartbeat: float | None = 15.0,
        codec: str | None = "json",
        max_connections: int | None = None,
        mailbox_size: int = 256,
    ) -> None:
        if codec not in (None, "json"):
            raise ValueError(f"codec must be None or 'json', not {codec!r}")
        if heartbeat is not None and not heartbeat > 0:
            raise ValueError(f"heartbeat must be positive (or None), not {heartbeat!r}")
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be at least 1, not {mailbox_size}")
        self._workers = Pool(worker, pool, required=True)
        self.heartbeat = heartbeat
        self.codec = codec
        self.max_connections = max_connections
        self._conn_mailbox = mailbox_size
        self._conns = ConnectionSet(self)
        self._quiescing = False
        self._accepted = self._no_worker = self._refused_full = 0
        mark_coroutine_function(self)  # aiohttp takes it as an async handler

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request with an event stream, served until it ends (aiohttp calls this)."""
        if not self.alive or self._quiescing:
            return web.Response(status=503, text="503 Service Unavailable")
        if self.max_connections is not None and len(self._conns) >= self.max_connections:
            self._refused_full += 1
            return web.Response(status=503, text="503 Service Unavailable: too many streams")
        worker = self._workers.pick(self)
        if worker is None:
            self._no_worker += 1
            return web.Response(status=503, text="503 Service Unavailable: no worker")
        response = web.StreamResponse(headers=_HEADERS)
        await response.prepare(request)
        conn = SSEConnection(response, request, codec=self.codec, heartbeat=self.heartbeat)
        try:
            self.spawn_nowait(conn, mailbox_size=self._conn_mailbox)
        except MetakitError:  # the node is stopping
            return response
        self._conns.add(conn)
        self._accepted += 1
        conn.peer = request.remote
        conn.open(worker, SSEConnect(conn.id, WebRequest(request), _last_id(request)))
        try:
            await conn._serve()
        finally:
            if conn.alive and conn.writable:  # aiohttp cancelled us: the client has gone
                conn._gone("closed")
        return response

    def terminate(self, reason: Any) -> None:
        """End every stream with this handler's reason."""
        self._conns.end_all(reason)

    def quiesce(self) -> asyncio.Future[None] | None:
        """``node.stop()``: a stream never ends on its own (and a web server's
        graceful close waits for it): end them now, with a ``retry:``, while
        the workers still run; the node waits until they have ended."""
        self._quiescing = True
        gone = self._conns.wait_empty()
        if gone is not None:
            self.terminate("shutdown")
        return gone

    def statistics(self) -> SSEHandlerStatistics:
        """A snapshot of the counters."""
        return SSEHandlerStatistics(
            accepted=self._accepted,
            no_worker=self._no_worker,
            refused_full=self._refused_full,
            connections=len(self._conns),
        )


def _last_id(request: web.BaseRequest) -> str | None:
    value = request.headers.get("Last-Event-ID")
    return value if value else None
