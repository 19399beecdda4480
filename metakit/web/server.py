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
    """

    connections: int


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

    Args:
        host: address to bind.
        port: port to bind; 0 picks a free one (read :attr:`url` after spawning).
        app: the aiohttp application.
        ssl: an ``ssl.SSLContext`` for HTTPS.
        shutdown_timeout: seconds in-flight requests get to finish when the
            server ends.
        backlog: the listen backlog.
        reuse_port: set ``SO_REUSEPORT``.
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
        **runner_options: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.app = app
        self._ssl = ssl
        self._backlog = backlog
        self._reuse_port = reuse_port
        runner_options.setdefault("handler_cancellation", True)
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=shutdown_timeout, **runner_options
        )
        self._closing: asyncio.Task[Any] | None = None

    async def init(self) -> None:
        """Set the app up and bind."""
        await self._runner.setup()
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
            self._closing = self.create_task(
                self._runner.cleanup(), name=f"metakit web stop {self.id!r}"
            )
        return self._closing

    def statistics(self) -> WebServerStatistics:
        """A snapshot of the counters."""
        server = self._runner.server
        return WebServerStatistics(connections=len(server.connections) if server else 0)

    def handle_inspect(self) -> dict[str, str]:
        """The URL and the number of open connections."""
        info = super().handle_inspect()
        info["url"] = self.url if self._runner.addresses else "-"
        return info
