"""Process: the actor base class users subclass.

A process owns a mailbox and handles one message at a time. Its handlers may
be plain functions or coroutines; the runtime decides once per class
(DESIGN.md §3). A class whose handlers are all plain functions drains its
mailbox with no Task at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from ._done import DONE as _DONE
from ._envelope import IGNORE, Signal
from ._state import DEAD, EXITING
from .errors import NodeNotRunning, NoProcess
from .ids import PID, Alias, Ref, Target
from .mailbox import Mailbox, process_send
from .messages import Caller, Exit, NodeDown

if TYPE_CHECKING:
    from .meta import Meta
    from .node import Node

__all__ = ["Process"]

P = TypeVar("P", bound="Process")


class Process(Mailbox):
    """An actor: subclass it and override the handlers you need.

    ::

        class Counter(metakit.Process):
            async def init(self, start: int = 0) -> None:
                self.count = start

            def handle_message(self, sender, message) -> None:
                self.count += message

            def handle_call(self, sender, request):
                return self.count

    Start one with ``await node.spawn(Counter, 5)`` or, from another process,
    ``await self.spawn(Counter, 5)``. Each handler may be ``def`` or
    ``async def``; one process never runs two handlers at once, even while a
    coroutine handler awaits.

    Attributes:
        trap_exit: when ``True``, exit signals from links (and ``send_exit``
            from anyone but the parent) arrive as :class:`~metakit.Exit`
            messages instead of ending the process. ``"kill"`` cannot be trapped.

    Error handling:
        An exception escaping ``handle_message`` ends the process with that
        exception as reason (logged with its traceback). An exception escaping
        ``handle_call`` is raised at the caller instead, and the process
        carries on. ``raise metakit.Stop(reason)`` ends it deliberately.
    """

    __slots__ = (
        "_mk_env",
        "_mk_events",
        "_mk_metas",
        "_mk_name",
        "_mk_parent",
        "_mk_pid",
        "_mk_subs",
    )

    trap_exit: bool = False

    # -- callbacks -------------------------------------------------------------

    def init(self, *args: Any, **kwargs: Any) -> Awaitable[None] | None:
        """Set the process up; ``spawn`` returns once it has finished.

        Receives the positional and extra keyword arguments given to
        ``spawn``. An exception raised here reaches the spawner, and nothing
        of the process is left behind.
        """
        return None

    def handle_message(self, sender: PID, message: Any) -> Awaitable[None] | None:
        """Handle one message sent with ``send`` (or a Down, Exit, EventMessage).

        Args:
            sender: the PID of the sending process (a meta's parent for metas).
            message: the message.
        """
        self.log.warning("unhandled message %r from %r", message, sender)
        return None

    def handle_call(self, sender: Caller, request: Any) -> Any:
        """Answer one ``call``: the return value is the reply.

        Return :data:`~metakit.NO_REPLY` to answer later with
        ``self.reply(sender, value)``. An exception raised here is raised at
        the caller; this process keeps running.

        Args:
            sender: the handle of this call; ``sender.pid`` is the caller.
            request: the request.
        """
        raise NotImplementedError(f"{type(self).__name__} does not handle calls")

    def terminate(self, reason: Any) -> Awaitable[None] | None:
        """Clean up when the process ends, with any reason but ``"kill"``.

        ``"kill"`` ends a process at once without running this callback (as
        in Erlang); its meta-processes are still terminated and close their
        objects.
        """
        return None

    def handle_inspect(self) -> dict[str, str]:
        """Extra fields for ``node.process_info``; keep it quick and read-only."""
        return {}

    # -- identity --------------------------------------------------------------

    def _mk_setup(
        self, node: Node, pid: PID, parent: PID, mailbox_size: int, env: dict[str, Any] | None
    ) -> None:
        self._mk_setup_mailbox(node, pid, mailbox_size)
        self._mk_pid = pid
        self._mk_parent = parent
        self._mk_name: str | None = None
        self._mk_env = env
        self._mk_metas: set[Meta] | None = None
        self._mk_events: set[str] | None = None
        self._mk_subs: dict[str, Ref | None] | None = None

    @property
    def pid(self) -> PID:
        """This process's PID."""
        return self._mk_pid

    @property
    def name(self) -> str | None:
        """The registered name, if any."""
        return self._mk_name

    @property
    def parent(self) -> PID:
        """The spawner's PID (the node's own PID for processes the node spawned)."""
        return self._mk_parent

    @property
    def node(self) -> Node:
        """The node this process runs on."""
        return self._mk_node

    # -- messaging -------------------------------------------------------------

    send = process_send  # the hop, inlined in mailbox.py beside the envelope it fills

    def call(self, to: Target, request: Any, timeout: float | None = 5.0) -> asyncio.Future[Any]:
        """Send ``request`` to ``to``'s ``handle_call``; await the result for its reply.

        ``reply = await self.call(to, request)``. The request is sent when
        ``call`` is called (a plain function returning a future: no coroutine
        per call); errors in sending raise there, the others when awaited.

        Raises:
            NoProcess: no live process or meta answers to ``to``.
            MailboxFull: the target's mailbox is full; the request was not delivered.
            CallTimeout: no reply within ``timeout`` seconds (a late reply is
                discarded). ``timeout=None`` waits as long as it takes.

        A call whose caller stops waiting (it timed out, or the awaiting
        task was cancelled) is withdrawn: still queued, the callee skips
        it; already running in a coroutine ``handle_call``, that handler is
        cancelled (``CancelledError`` at its ``await``; shield what must
        finish), so the calls behind it are served rather than time out
        too. A plain ``handle_call`` runs to its end.
            ProcessExited: the callee ended before replying.
            Exception: whatever the callee's ``handle_call`` raised.
        """
        future = self._mk_node._call(self._mk_pid, to, request, timeout, self)
        self._mk_out += 1
        return future

    def reply(self, caller: Caller, value: Any) -> None:
        """Answer a call for which ``handle_call`` returned ``NO_REPLY``.

        A reply to a caller that timed out or is gone is discarded.
        """
        self._mk_reply(caller, value)

    def send_exit(self, to: Target, reason: Any) -> None:
        """Send an exit signal: ``to`` ends with ``reason`` unless it traps exits.

        ``"kill"`` always ends it, at once. A meta-process handles the signal
        after the messages already in its mailbox, so ``send_exit(conn,
        "normal")`` closes a connection after the writes sent before it.
        """
        target = self._mk_node._registry.route(to)
        forced = isinstance(target, Process) and target._mk_parent == self._mk_pid
        target._mk_signal(Signal(self._mk_pid, self._mk_pid, reason, forced=forced))

    # -- spawning --------------------------------------------------------------

    async def spawn(
        self,
        cls: type[P],
        *args: Any,
        name: str | None = None,
        link: bool = False,
        mailbox_size: int = 0,
        env: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> PID:
        """Start a child process and return its PID once its ``init`` has finished.

        Args:
            cls: the Process subclass.
            *args: passed to ``init``, with any extra ``**kwargs``.
            name: register the child under this name.
            link: link the child to this process.
            mailbox_size: bound of the child's mailbox (0: unbounded).
            env: environment entries for the child (it inherits the rest from this process).
        """
        return await self._mk_node._actors.spawn(
            cls, args, kwargs, parent=self, name=name, link=link, mailbox_size=mailbox_size, env=env
        )

    async def spawn_meta(self, meta: Meta, *, mailbox_size: int = 0) -> Alias:
        """Start a meta-process owned by this process and return its Alias.

        Returns once the meta's ``init`` has finished; an exception there is
        raised here. The meta ends when this process ends.
        """
        return await self._mk_node._actors.spawn_meta(meta, self, mailbox_size)

    # -- names, links, monitors ------------------------------------------------

    def register_name(self, name: str, *, cluster: bool = False) -> Awaitable[None]:
        """Register this process under ``name`` (one name per process).

        ``await self.register_name(name, cluster=True)`` claims it across the
        cluster (``NameTaken`` if held on any node); see ``Node.register_name``.
        """
        return self._mk_node.register_name(name, self._mk_pid, cluster=cluster)

    def unregister_name(self) -> None:
        """Drop this process's registered name, if any."""
        if self._mk_name is not None:
            self._mk_node.unregister_name(self._mk_name)

    def link(self, target: Target) -> None:
        """Link to ``target`` (a PID, a name or a meta Alias), both ways.

        When either ends, the other gets an exit signal with the same reason
        and ends too, unless it traps exits (then it gets an ``Exit``
        message). As in Erlang, reason ``"normal"`` does not end a linked
        process: only trapping processes see it, as ``Exit(source, "normal")``;
        and ``"kill"`` travels over a link as ``"killed"``, which can be trapped.

        Raises:
            NoProcess: ``target`` is not alive.
        """
        self._mk_node._links.link(self, self._mk_node._registry.route(target))

    def unlink(self, target: Target) -> None:
        """Remove a link; does nothing if there is none or the target is gone."""
        try:
            other = self._mk_node._registry.route(target)
        except NoProcess:
            return
        self._mk_node._links.unlink(self, other)

    def monitor(self, target: Target) -> Ref:
        """Watch ``target``: one ``Down(target, ref, reason)`` arrives when it ends.

        If it is already gone, ``Down`` arrives at once with reason ``"noproc"``.
        """
        return self._mk_node._links.monitor(self, target)

    def demonitor(self, ref: Ref) -> None:
        """Stop watching; a ``Down`` for ``ref`` already in the mailbox is removed."""
        self._mk_node._links.demonitor(self, ref)

    def monitor_node(self, name: str) -> None:
        """Watch node ``name``: one ``NodeDown(name, reason)`` arrives when it goes down.

        At once, with reason ``"noconnection"``, if it is not up now (without a
        cluster: any node but this one). Watching this process's own node
        never fires.
        """
        node = self._mk_node
        if node.cluster is not None:
            node.cluster.monitor_node(self, name)
        elif name != node.name:
            self._mk_deliver_system(node._pid, NodeDown(name, "noconnection"))

    def demonitor_node(self, name: str) -> None:
        """Stop watching node ``name``."""
        if self._mk_node.cluster is not None:
            self._mk_node.cluster.demonitor_node(self, name)

    # -- groups ----------------------------------------------------------------

    def join_group(self, group: str) -> Awaitable[None]:
        """Join process group ``group`` (Erlang's ``pg``); await it on a cluster
        for the other nodes to know. A process leaves its groups when it ends.

        Raises:
            ValueError: ``group`` is not one NATS subject token (``[A-Za-z0-9_-]``).
        """
        return self._mk_node._groups.join(self, group) or _DONE

    def leave_group(self, group: str) -> Awaitable[None]:
        """Leave process group ``group`` (nothing if not in it)."""
        return self._mk_node._groups.leave(self, group) or _DONE

    def send_group(self, group: str, message: Any) -> int:
        """Send ``message`` to every member of ``group`` once (this process too
        if it is one); returns how many local members it reached (a full
        mailbox is skipped and counted) plus the other nodes it went to."""
        self._mk_out += 1
        return self._mk_node._groups.send(self._mk_pid, group, message)

    def call_group(
        self, group: str, request: Any, timeout: float | None = 5.0
    ) -> asyncio.Future[Any]:
        """Call one member of ``group``, round-robin over the members; as :meth:`call`.

        Raises:
            NoProcess: the group has no member.
        """
        return self.call(self._mk_node._groups.pick(group), request, timeout)

    # -- events ----------------------------------------------------------------

    def register_event(self, name: str, *, cluster: bool = False) -> Awaitable[None]:
        """Declare this process the producer of event ``name``.

        ``await self.register_event(name, cluster=True)`` makes it an event of
        the whole namespace (DESIGN.md §8): ``monitor_event`` and
        ``link_event`` find it from any node, and ``send_event`` sends one
        message per node with subscribers. Its name is then cluster-wide
        (``NameTaken`` when awaited if another node has it) and is released
        when the event ends. Without ``cluster`` it is registered when this
        returns (awaiting the result is optional).

        Raises:
            NameTaken: this node has an event of that name.
            ValueError: ``name`` is not one NATS subject token (``[A-Za-z0-9_-]``).
            NodeNotRunning: ``cluster=True`` on a node without a cluster.
        """
        node = self._mk_node
        if cluster:
            if node.cluster is None:
                raise NodeNotRunning(f"node {node.name!r} has no cluster for event {name!r}")
            return node.cluster.register_event(name, self._mk_pid)
        node._events.register(self, name)
        return _DONE

    def unregister_event(self, name: str) -> None:
        """Withdraw event ``name``; its monitors get ``Down(name, ref, "unregistered")``."""
        self._mk_node._events.unregister(self, name, "unregistered")

    def send_event(self, name: str, message: Any) -> int:
        """Publish ``message`` to every subscriber of ``name``, in one pass.

        Returns:
            how many subscribers received it, plus (a cluster event) how
            many other nodes it went to; a subscriber whose bounded mailbox is
            full misses it, and that is counted and logged.

        Raises:
            UnknownEvent: this process does not produce ``name``.
            TypeError: a cluster event's ``message`` does not cross a node
                boundary; nothing is delivered.
        """
        return self._mk_node._events.send(self, name, message)

    def monitor_event(self, name: str) -> Ref:
        """Subscribe to ``name``: ``EventMessage``s, then ``Down`` when the producer ends."""
        return self._mk_node._events.subscribe(self, name, monitor=True)

    def link_event(self, name: str) -> None:
        """Subscribe to ``name``: ``EventMessage``s, then an exit signal when the producer ends."""
        self._mk_node._events.subscribe(self, name, monitor=False)

    def demonitor_event(self, name: str) -> None:
        """Unsubscribe from ``name`` (after ``monitor_event``)."""
        self._mk_node._events.unsubscribe(self, name)

    def unlink_event(self, name: str) -> None:
        """Unsubscribe from ``name`` (after ``link_event``)."""
        self._mk_node._events.unsubscribe(self, name)

    # -- environment -----------------------------------------------------------

    def env(self, key: str, default: Any = None) -> Any:
        """Look ``key`` up in this process's env, then its parents', then the node's."""
        return self._mk_node._env_lookup(self, key, default)

    # -- runtime hooks ---------------------------------------------------------

    def _mk_trap(self, sig: Signal) -> Any:
        if self.trap_exit and not sig.forced and sig.source != self._mk_parent:
            return Exit(sig.source, sig.reason)
        if sig.link and sig.reason == "normal":
            return IGNORE
        return None

    def _mk_end(self, reason: Any) -> None:
        if self._mk_state >= EXITING:
            return
        self._mk_state = EXITING
        if reason != "kill":
            try:
                self.terminate(reason)
            except Exception:
                self.log.exception("exception in terminate")
        self._mk_node._actors.reap(self, reason)

    async def _mk_end_async(self, reason: Any) -> None:
        if self._mk_state >= EXITING:
            return
        self._mk_state = EXITING
        if reason != "kill":
            try:
                result = self.terminate(reason)
                if result is not None:
                    await result
            except Exception:
                self.log.exception("exception in terminate")
        if self._mk_state != DEAD:
            self._mk_node._actors.reap(self, reason)

    def _mk_kill(self) -> None:
        if self._mk_state == DEAD:
            return
        self._mk_state = EXITING
        self._mk_node._cancel_drain(self)
        self._mk_node._actors.reap(self, "kill")

    def __repr__(self) -> str:
        pid = getattr(self, "_mk_pid", None)
        return f"<{type(self).__name__} {pid!r}>"
