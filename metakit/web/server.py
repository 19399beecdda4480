"""WebServer: an aiohttp application served by a meta-process."""

from __future__ import annotations

import asyncio
import ssl as _ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import MetakitError
from ..meta import Meta

__all__ = ["WebServer", "WebServerStatistics"]


@dataclass(frozen=True, slots=True)
class WebServerStatistics:
    """A web server's counters at one moment (``server.statistics()``).

    Attributes:
        connections: HTTP connections open now.
        headers_timed_out: connections closed because their first request's
            headers were not complete within ``header_timeout`` of accept.
    """

    connections: int
    headers_timed_out: int


class _HeaderDeadline:
    """Closes a connection whose first request's headers are not complete in time.

    aiohttp bounds the wait for a request only with its keep-alive timer,
    meant for idle connections between requests (``keepalive_timeout``, 3630 s
    by aiohttp's default); no byte received extends it. This adds a shorter
    deadline from accept to the first request: one timer handle per
    connection, cancelled when aiohttp builds that request (its headers are
    complete) or loses the connection. No task per connection; per request,
    one dict lookup.

    It hooks three public names of aiohttp's ``web.Server``: its connections
    report to ``connection_made`` and ``connection_lost``, and copy
    ``request_factory`` when made. Instance attributes shadow the methods,
    so nothing of aiohttp is subclassed or reached by a private name.
    """

    __slots__ = ("_factory", "_loop", "_lost", "_made", "_timeout", "_timers", "expired")

    def __init__(self, server: web.Server, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._timers: dict[web.RequestHandler, asyncio.TimerHandle] = {}
        self.expired = 0
        self._made = server.connection_made
        self._lost = server.connection_lost
        self._factory = server.request_factory
        server.connection_made = self._connection_made  # type: ignore[method-assign]
        server.connection_lost = self._connection_lost  # type: ignore[method-assign]
        server.request_factory = self._request_factory

    def _connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        self._made(handler, transport)
        self._timers[handler] = self._loop.call_later(self._timeout, self._expire, handler)

    def _request_factory(
        self, message: Any, payload: Any, protocol: web.RequestHandler, writer: Any, task: Any
    ) -> web.BaseRequest:
        timer = self._timers.pop(protocol, None)  # None after the first request
        if timer is not None:
            timer.cancel()
        return self._factory(message, payload, protocol, writer, task)

    def _connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()
        self._lost(handler, exc)

    def _expire(self, handler: web.RequestHandler) -> None:
        del self._timers[handler]
        self.expired += 1
        # What aiohttp's keep-alive timer does to an idle connection: close it,
        # with no response (no request has arrived to answer).
        handler.force_close()

    def close(self) -> None:
        """Cancel the timers left (the server has stopped)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class WebServer(Meta):
    """Serve an aiohttp ``Application`` on ``host:port`` for as long as the meta lives.

    ::

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)      # a WebHandler
        server = WebServer("127.0.0.1", 8080, app)
        await self.spawn_meta(server)                         # binds here
        print(server.url)

    It uses ``AppRunner`` and a ``TCPSite`` (aiohttp's own lifecycle, never
    ``run_app``), with ``handler_cancellation=True`` so that a request whose
    client has gone stops waiting for its worker.

    Read deadlines (DESIGN.md §12): a client that sends nothing, or sends its
    request line and headers a byte at a time, holds a connection for
    ``header_timeout`` at most, counted from accept (after the TLS handshake
    with ``ssl``); bytes arriving meanwhile do not extend it. On a kept-alive
    connection, the next request's headers must then be complete within
    ``keepalive_timeout`` of the end of the previous response (aiohttp's own
    timer, which bytes do not extend either). Either way the connection is
    closed with no response. A slow handler is never cut: the deadlines end
    where the headers do (``WebHandler`` has its own for the body).

    Args:
        host: address to bind.
        port: port to bind; 0 picks a free one (read :attr:`url` after spawning).
        app: the aiohttp application.
        ssl: an ``ssl.SSLContext`` for HTTPS.
        shutdown_timeout: seconds in-flight requests get to finish when the
            server ends.
        backlog: the listen backlog.
        reuse_port: set ``SO_REUSEPORT``.
        header_timeout: seconds from accept for the first request's headers
            to be complete, or None for no such deadline (see above).
        keepalive_timeout: seconds a kept-alive connection waits for the next
            request's headers, from the end of the previous response
            (aiohttp's own default is 3630).
        runner_options: more keyword arguments for ``web.AppRunner`` (e.g.
            ``access_log=None``).

    Resource handling:
        Binding happens in ``init``: ``spawn_meta`` raises ``OSError`` for a
        busy port or a bad address. When the meta ends it stops accepting at
        once, lets in-flight requests finish up to ``shutdown_timeout``, then
        closes the connections and runs the app's cleanup; ``node.stop()``
        waits for that. ``node.stop()`` does this first, before it stops any
        process, so the workers answer the requests in flight.
    """

    def __init__(
        self,
        host: str,
        port: int,
        app: web.Application,
        *,
        ssl: _ssl.SSLContext | None = None,
        shutdown_timeout: float = 10.0,
        backlog: int = 128,
        reuse_port: bool = False,
        header_timeout: float | None = 10.0,
        keepalive_timeout: float = 75.0,
        **runner_options: Any,
    ) -> None:
        if header_timeout is not None and header_timeout <= 0:
            raise ValueError(f"header_timeout must be positive or None, not {header_timeout!r}")
        self.host = host
        self.port = port
        self.app = app
        self._ssl = ssl
        self._backlog = backlog
        self._reuse_port = reuse_port
        self._header_timeout = header_timeout
        self._headers: _HeaderDeadline | None = None
        runner_options.setdefault("handler_cancellation", True)
        # Longer than the 60 s idle timeout of common reverse proxies (nginx's
        # upstream keepalive, cloud load balancers), so that they close first.
        runner_options["keepalive_timeout"] = keepalive_timeout
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=shutdown_timeout, **runner_options
        )
        self._closing: asyncio.Task[Any] | None = None

    async def init(self) -> None:
        """Set the app up and bind."""
        await self._runner.setup()
        server = self._runner.server
        if self._header_timeout is not None and server is not None:
            self._headers = _HeaderDeadline(server, self._header_timeout)
        site = web.TCPSite(
            self._runner,
            self.host,
            self.port,
            ssl_context=self._ssl,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        addresses = self._runner.addresses
        if not addresses:
            raise MetakitError("the web server is not listening")
        return addresses[0][0], addresses[0][1]

    @property
    def url(self) -> str:
        """The base URL, e.g. ``"http://127.0.0.1:8080"``."""
        host, port = self.address
        scheme = "https" if self._ssl else "http"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"

    def terminate(self, reason: Any) -> None:
        """Stop accepting now; finish in-flight requests and close in the background."""
        self._close()

    def quiesce(self) -> asyncio.Task[Any]:
        """``node.stop()``: close before any process stops, so the workers are still
        there to answer the requests in flight."""
        return self._close()

    def _close(self) -> asyncio.Task[Any]:
        # aiohttp's graceful shutdown awaits; terminate must not, so the node
        # runs it and node.stop() waits for it.
        if self._closing is None:
            self._closing = self.create_task(self._stop(), name=f"metakit web stop {self.id!r}")
        return self._closing

    async def _stop(self) -> None:
        try:
            await self._runner.cleanup()
        finally:
            if self._headers is not None:
                self._headers.close()

    def statistics(self) -> WebServerStatistics:
        """A snapshot of the counters."""
        server = self._runner.server
        return WebServerStatistics(
            connections=len(server.connections) if server else 0,
            headers_timed_out=self._headers.expired if self._headers else 0,
        )

    def handle_inspect(self) -> dict[str, str]:
        """The URL and the number of open connections."""
        info = super().handle_inspect()
        info["url"] = self.url if self._runner.addresses else "-"
        return info
