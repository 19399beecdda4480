"""Observer: the live web page of a node, or of a cluster (DESIGN.md §11), as a process.

::

    observer = await node.spawn(Observer, token="s3cret")
    print(await node.call(observer, "url"))   # http://127.0.0.1:PORT/?token=s3cret

The observer owns a :class:`~metakit.web.WebServer` (127.0.0.1 by default)
serving one page — plain HTML, JS and CSS files of this package, no build
step — a :class:`~metakit.websocket.WebSocketHandler` stream, and a
:class:`~metakit.web.WebHandler` for the actions. Each open page holds one
WebSocket: it sends its view (node, sort, filter, row cap, selected
process) and gets a sample once a second. The ticks are a timer armed
while at least one page is connected: with none, no timer, task or message
runs, and the last page closing cancels the timer at once.

The frames a page gets (JSON text messages), in order:

* ``{"hello": {"node", "interval", "actions", "max_rows"}}`` once, at connect;
* ``{"sample": S}``, a full frame: at connect, after each (valid) view the
  page sends, after an error, and after a frame the page missed (its
  connection's mailbox was full). ``S`` holds ``stats`` (the node's
  figures), ``processes`` (``{"total", "matched", "rows"}``, a row being
  ``[id, pid, name, class, state, mailbox, bound, in/s, out/s]``),
  ``metas`` (``{"total", "rows"}``, a row ``[id, alias, class, parent,
  state, mailbox, bound, bytes in/s, bytes out/s, messages in/s, messages
  out/s, bytes in, bytes out, paused reads, held writes, drops, more]``),
  ``events`` (rows ``[name, producer, subscribers, nodes, cluster,
  drops]``), ``tree``, ``details`` (the selected process, or null),
  ``view``, ``actions``, ``nodes`` and ``observed``; or just ``{"error":
  text}``;
* ``{"delta": D}`` for every later sample, against what the page has: ``D``
  holds ``stats`` whole, always; each of ``tree``, ``details``, ``view``,
  ``actions``, ``nodes``, ``observed`` whole, only when it changed; and for
  each row table (``processes``, ``metas``, ``events``) with anything
  changed, an object with only what did: ``changed`` (the rows that are
  new or not as they were), ``gone`` (the keys of rows that left), ``order`` (every
  key, in order, when that is not the old order less the ``gone`` ones),
  and ``total``/``matched`` when they changed. A row's key is its first
  cell (an id as a string; an event's name);
* ``{"error": text}`` for a view the observer could not read (what the page
  has stays as it was).

The diffing (:mod:`metakit.observer._delta`) is per page, here, after the
agent's answer: the agent renders rows, it knows nothing of pages.

The sampling is done by the observer's :class:`~metakit.observer._agent.Agent`,
which on a cluster is in the group ``metakit-observer``: to show another
node, the observer calls that node's agent, so the sample is taken there
and only the rendered rows cross (``node.nodes()`` lists them all; a node
without an observer cannot be shown).

Safety: see :mod:`metakit.observer._guard` for the token, Host and Origin
checks. The actions (send a JSON value, exit, kill) exist only with
``allow_actions=True``: otherwise the page has no controls for them and
``/api/action`` answers 403; a node shown through the cluster applies its
own observer's ``allow_actions`` as well. Nothing a page sends is evaluated.
"""

from __future__ import annotations

import asyncio
import secrets
from importlib import resources
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from ..errors import MailboxFull, MetakitError
from ..ids import PID, Alias
from ..messages import Caller
from ..process import Process
from ..web import WebHandler, WebRequest, WebServer
from ..websocket import WebSocketHandler, WSConnect, WSDisconnect, WSMessage
from ._agent import GROUP, Agent
from ._delta import Sent
from ._guard import guard, is_loopback, secure_headers
from ._view import View

__all__ = ["Observer"]

_STREAM = "/stream"
_FILES = {  # what the page loads: path -> (file in static/, content type)
    "/": ("index.html", "text/html"),
    "/observer.js": ("observer.js", "text/javascript"),
    "/observer.css": ("observer.css", "text/css"),
}
_MAX_PAGES = 32  # pages open at once
_MAX_MESSAGE = 16 * 1024  # what a page sends is a view: small


class _Tick:
    """The timer's message to the observer: time for a sample."""


_TICK = _Tick()


class Observer(Process):
    """The live page of this node (and, on a cluster, of every node with an observer).

    Args:
        host: the address to listen on (keep 127.0.0.1 unless you mean it).
        port: the port; 0 picks a free one (``call(observer, "url")``).
        token: a secret every request must carry (the URL from ``"url"``
            carries it), or None for none.
        allow_actions: let the page send a message (a JSON value) to a
            process, send it an exit signal, or kill it.
        interval: seconds between samples while a page is open.
        max_rows: the most process rows a page may ask for.

    ``await node.call(observer, "url")`` gives the page's URL, a ``str``.

    Resource handling:
        The server, its stream and every page's connection are metas of the
        observer, closed when it ends; the agent is linked and ends with it.
    """

    async def init(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        allow_actions: bool = False,
        interval: float = 1.0,
        max_rows: int = 1000,
    ) -> None:
        """Bind the server and spawn the agent (see the class for the arguments).

        Raises:
            ValueError: an empty token, an interval that is not positive, or
                ``max_rows`` below 1.
            OSError: the port is taken, or the address is not this machine's.
        """
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty str, or None")
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows!r}")
        self.token = token
        self.allow_actions = allow_actions
        self.interval = interval
        self.max_rows = max_rows
        self.views: dict[Alias, View] = {}  # page -> what it shows
        self.sent: dict[Alias, Sent] = {}  # page -> what it has (no entry: send it all)
        self.timer: asyncio.TimerHandle | None = None
        self.ticks = 0
        self.files = {
            path: (resources.files("metakit.observer").joinpath("static", name).read_bytes(), kind)
            for path, (name, kind) in _FILES.items()
        }
        self.agent = await self.spawn(
            Agent,
            link=True,
            allow_actions=allow_actions,
            max_rows=max_rows,
            max_age=interval / 2,
        )
        stream = WebSocketHandler(
            self.pid,
            codec="json",
            max_message=_MAX_MESSAGE,
            max_connections=_MAX_PAGES,
            # A page that vanished without closing (a dropped network) is found
            # within 7.5 s; one that closes is gone at once.
            heartbeat=5.0,
            compress=False,
        )
        api = WebHandler(self.pid, max_body=64 * 1024, timeout=10.0)
        await self.spawn_meta(stream)
        await self.spawn_meta(api)
        app = web.Application(
            middlewares=[
                guard(
                    token=token,
                    # Cookies do not tell ports apart: one name per observer run.
                    cookie=f"metakit-observer-{secrets.token_hex(4)}",
                    loopback=is_loopback(host),
                    stream=_STREAM,
                )
            ],
            client_max_size=64 * 1024,
        )
        app.on_response_prepare.append(secure_headers)
        for path in self.files:
            app.router.add_get(path, self.file)
        app.router.add_get(_STREAM, stream)
        app.router.add_route("*", "/api/{tail:.*}", api)
        self.server = WebServer(host, port, app)
        await self.spawn_meta(self.server)

    async def file(self, request: web.Request) -> web.Response:
        """A file of the page (aiohttp calls this; the guard has let the request in)."""
        body, kind = self.files[request.path]
        return web.Response(body=body, content_type=kind, charset="utf-8")

    def handle_inspect(self) -> dict[str, str]:
        """The URL, the pages open, whether the timer is set, the ticks so far."""
        return {
            "url": self.server.url,
            "pages": str(len(self.views)),
            "ticking": "yes" if self.timer is not None else "no",
            "ticks": str(self.ticks),
            "agent": repr(self.agent),
            "actions": "allowed" if self.allow_actions else "refused",
        }

    def url(self) -> str:
        """The page's URL, with the token when there is one."""
        base = f"{self.server.url}/"
        return base if self.token is None else f"{base}?token={quote(self.token, safe='')}"

    # -- calls: the URL, and the HTTP API -------------------------------------------------

    async def handle_call(self, sender: Caller, request: Any) -> Any:
        """``"url"``: the page's URL; a ``WebRequest`` to ``/api/...``: its response."""
        match request:
            case "url":
                return self.url()
            case WebRequest(path="/api/action"):
                return await self.action(request)
            case WebRequest():
                return _json(404, {"error": "not found"})
        return None

    async def action(self, request: WebRequest) -> web.Response:
        """``POST /api/action`` with ``{"node", "target", "action", "value"|"reason"}``."""
        if not self.allow_actions:
            return _json(403, {"error": "actions are off"})
        if request.method != "POST":
            return _json(405, {"error": "POST an action"})
        # A JSON body only: a cross-site form cannot send one without a preflight.
        if request.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return _json(415, {"error": "send application/json"})
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return _json(400, {"error": "the body is not JSON"})
        if not isinstance(body, dict):
            return _json(400, {"error": "an action is a JSON object"})
        agent = self.agent_of(body.get("node", self.node.name))
        if agent is None:
            return _json(404, {"error": f"no observer on node {body.get('node')!r}"})
        try:
            status, text = await self.call(agent, ("act", body), timeout=5.0)
        except MetakitError as exc:
            return _json(502, {"error": str(exc)})
        return _json(int(status), {"ok": status == 200, "message": str(text)})

    def agent_of(self, node: Any) -> PID | None:
        """The agent that samples ``node``: this observer's, or (on a cluster) the
        agent of an observer there."""
        if node == self.node.name:
            return self.agent
        if self.node.cluster is None or not isinstance(node, str):
            return None
        for pid in self.node.group_members(GROUP):
            if pid.node == node:
                return pid
        return None

    # -- pages ----------------------------------------------------------------------------

    async def handle_message(self, sender: PID, message: Any) -> None:
        """The timer's ticks, and the pages' stream: connect, views, disconnect."""
        match message:
            case _Tick():
                self.timer = None
                self.ticks += 1
                await self.push(list(self.views))
                self.arm()
            case WSConnect(conn, _, _):
                self.views[conn] = View(node=self.node.name, limit=min(200, self.max_rows))
                self.write(conn, {"hello": self.hello()})
                await self.push([conn])
                self.arm()
            case WSMessage(conn, data) if conn in self.views:
                try:
                    view = View.parse(
                        data.get("view") if isinstance(data, dict) else None,
                        node=self.node.name,
                        max_rows=self.max_rows,
                    )
                except ValueError as exc:
                    self.write(conn, {"error": f"bad view: {exc}"})
                    return
                self.views[conn] = view
                self.sent.pop(conn, None)  # a full frame: a view is also how a page resyncs
                await self.push([conn])  # at once: a click shows its answer without a wait
            case WSDisconnect(conn, _, _):
                self.views.pop(conn, None)
                self.sent.pop(conn, None)
                if not self.views and self.timer is not None:
                    self.timer.cancel()  # quiet at once: nobody is watching
                    self.timer = None

    def hello(self) -> dict[str, Any]:
        """What a page learns once: who it watches, and how."""
        return {
            "node": self.node.name,
            "interval": self.interval,
            "actions": self.allow_actions,
            "max_rows": self.max_rows,
        }

    def arm(self) -> None:
        """Start the timer for the next sample, if a page is open and none is set."""
        if self.views and self.timer is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.interval, self._due)

    def _due(self) -> None:
        try:
            self.node.send(self.pid, _TICK)
        except MetakitError:  # the observer or the node is ending
            self.timer = None

    async def push(self, conns: list[Alias]) -> None:
        """Send each of ``conns`` a sample of the node it shows, each node sampled
        once: as a delta from the last one it got, or whole (see the module)."""
        by_node: dict[str, list[Alias]] = {}
        for conn in conns:
            view = self.views.get(conn)
            if view is not None:
                by_node.setdefault(view.node, []).append(conn)
        if not by_node:
            return
        nodes = self.node.nodes()
        observed = sorted({p.node for p in self.node.group_members(GROUP)} | {self.node.name})
        asks = [
            self.sample_on(node, [self.views[c].wire() for c in group])
            for node, group in by_node.items()
        ]
        answers = await asyncio.gather(*asks)  # the nodes shown, sampled at once
        for group, samples in zip(by_node.values(), answers, strict=True):
            for conn, sample in zip(group, samples, strict=True):
                sample["nodes"] = nodes
                sample["observed"] = observed
                if "actions" in sample:  # both this observer and the node's own allow them
                    sample["actions"] = bool(sample["actions"]) and self.allow_actions
                if conn in self.views:  # (not gone while the samples were taken)
                    self.write(conn, self.sent.setdefault(conn, Sent()).frame(sample))

    async def sample_on(self, node: str, views: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Samples of ``node`` for ``views`` from its agent (an error per view if none)."""
        agent = self.agent_of(node)
        if agent is None:
            return [{"error": f"no observer on node {node}"} for _ in views]
        try:
            samples = await self.call(agent, ("sample", views), timeout=max(2.0, self.interval))
        except MetakitError as exc:
            return [{"error": f"node {node}: {exc}"} for _ in views]
        if not isinstance(samples, list | tuple) or len(samples) != len(views):
            return [{"error": f"node {node}: a bad answer"} for _ in views]
        return [dict(s) if isinstance(s, dict) else {"error": "a bad answer"} for s in samples]

    def write(self, conn: Alias, data: Any) -> None:
        """Send ``data`` to one page (as JSON); a page that is behind misses it."""
        try:
            self.send(conn, WSMessage(conn, data))
        except MailboxFull:
            # A page that reads nothing misses frames; the next one is full, as
            # a delta from a frame it never got would not add up.
            self.sent.pop(conn, None)
        except MetakitError:
            self.views.pop(conn, None)  # gone: its WSDisconnect is on the way
            self.sent.pop(conn, None)

    def terminate(self, reason: Any) -> None:
        """Cancel the timer (the metas close the server and the pages)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _json(status: int, data: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")
