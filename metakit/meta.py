"""Meta: the meta-process base class — a main loop that owns an object.

A meta-process wraps one object (a socket, a connection, a device) and
translates its events into messages for its parent process (DESIGN.md §4).
Two halves run side by side:

* the **main loop**, ``start()``: ``async def start`` runs as a Task on the
  node's loop (what the network metas use); a plain ``def start`` runs in a
  dedicated OS thread, for truly blocking objects. When ``start`` returns the
  meta ends with reason ``"normal"``; when it raises, with the exception. A
  class without ``start`` has no main loop and lives until it is told to exit.
* the **mailbox handler**, ``handle_message``/``handle_call``, on the node's
  loop, one message at a time. It may run while the main loop is running, so
  state both touch needs care.

Exit signals are handled in order with the messages already queued (a
``send_exit(conn, "normal")`` does not overtake earlier writes); ``"kill"``
acts at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import threading
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

from ._envelope import IGNORE, Signal
from ._state import DEAD, EXITING, RUNNING
from .errors import NoProcess, ProcessExited
from .ids import PID, Alias, Target
from .mailbox import Mailbox
from .messages import Caller

if TYPE_CHECKING:
    from .node import Node
    from .process import Process

__all__ = ["Meta"]


class Meta(Mailbox):
    """A meta-process: subclass it, then ``await process.spawn_meta(MyMeta(...))``.

    ::

        class Ticker(metakit.Meta):
            async def start(self) -> None:
                while True:
                    await asyncio.sleep(1.0)
                    self.send(self.parent, "tick")

    The constructor is yours (the network metas take their options there);
    the runtime sets the meta up when it is spawned, so one instance is
    spawned once.

    Resource handling:
        ``terminate(reason)`` is called exactly once, whatever ends the meta
        (main loop returned or raised, a handler raised, an exit signal, the
        parent ended, the node stopped, ``"kill"``). It must close the object
        so a blocked main loop wakes up; an ``async`` main loop is also
        cancelled. ``terminate`` must be a plain function.

    Error handling:
        An exception in ``init`` is raised at ``spawn_meta``; one in ``start``
        or a handler ends the meta with that exception as reason (logged).
        Processes that linked or monitored the Alias are told.
    """

    __slots__ = ("_mk_alias", "_mk_main", "_mk_parent_proc", "_mk_thread")

    _mk_signals_first: ClassVar[bool] = False
    _mk_main_kind: ClassVar[str] = "none"

    mailbox_size: int = 0
    """The bound of this meta's mailbox when ``spawn_meta`` gives none (0: unbounded)."""

    eager: ClassVar[bool] = False
    """Set it on a meta whose ``handle_message`` is a short, non-blocking write
    (a socket's): a send that finds the meta idle runs the handler at once,
    in order, instead of scheduling a drain (the ready network metas do)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._mk_eager = cls.eager and not cls._mk_async_mode
        if cls._mk_terminate_is_async:
            raise TypeError(f"{cls.__name__}.terminate must be a plain def: it closes the object")
        if cls.start is Meta.start:
            cls._mk_main_kind = "none"
        elif inspect.iscoroutinefunction(cls.start):
            cls._mk_main_kind = "task"
        else:
            cls._mk_main_kind = "thread"

    # -- callbacks -------------------------------------------------------------

    async def init(self) -> None:
        """Optional setup on the node's loop before the main loop starts.

        An exception here is raised at ``spawn_meta`` and the meta never starts.
        """

    def start(self) -> Awaitable[None] | None:
        """The main loop. Override as ``async def`` (a Task) or ``def`` (a thread)."""
        return None

    def handle_message(self, sender: PID, message: Any) -> Awaitable[None] | None:
        """Handle one message sent to this meta's Alias."""
        self.log.warning("unhandled message %r from %r", message, sender)
        return None

    def handle_call(self, sender: Caller, request: Any) -> Any:
        """Answer one call to this meta's Alias; the return value is the reply."""
        raise NotImplementedError(f"{type(self).__name__} does not handle calls")

    def terminate(self, reason: Any) -> None:
        """Close the object; called exactly once when the meta ends."""

    def handle_inspect(self) -> dict[str, str]:
        """Extra fields for ``node.meta_info``; keep it quick and read-only.

        By default, the fields of :meth:`statistics` as strings.
        """
        stats = self.statistics()
        if stats is None:
            return {}
        return {f.name: str(getattr(stats, f.name)) for f in dataclasses.fields(stats)}

    def quiesce(self) -> Awaitable[Any] | None:
        """Take part in the graceful start of ``node.stop()``; override it to.

        ``node.stop()`` calls it on every running meta before it stops any
        process: stop taking new work and return an awaitable that finishes
        the work in flight (or None); the node waits for it up to half its
        timeout. The meta is terminated later, as usual. A server stops
        listening here; a WebSocket handler closes its connections with 1001.
        """
        return None

    def statistics(self) -> Any:
        """An immutable snapshot of this meta's counters (a frozen dataclass), or None.

        The ready metas return their own dataclass; ``node.meta_info(alias)``
        carries it as ``.statistics``.
        """
        return None

    # -- identity and API --------------------------------------------------------

    def _mk_setup(self, node: Node, alias: Alias, parent: Process, mailbox_size: int) -> None:
        if getattr(self, "_mk_alias", None) is not None:
            raise ValueError(f"{self!r} has been spawned already; create a new instance")
        self._mk_setup_mailbox(node, alias, mailbox_size)
        self._mk_alias = alias
        self._mk_parent_proc = parent
        self._mk_main: asyncio.Task[None] | None = None
        self._mk_thread: threading.Thread | None = None

    @property
    def id(self) -> Alias:
        """This meta-process's Alias."""
        return self._mk_alias

    @property
    def parent(self) -> PID:
        """The PID of the process that owns this meta."""
        return self._mk_parent_proc._mk_pid

    @property
    def node(self) -> Node:
        """The node this meta runs on."""
        return self._mk_node

    @property
    def alive(self) -> bool:
        """Whether the meta has been spawned and not yet ended."""
        return getattr(self, "_mk_alias", None) is not None and self._mk_state < EXITING

    def send(self, to: Target, message: Any) -> None:
        """Send ``message``; the receiver sees the parent's PID as sender.

        Safe from the main-loop thread of a plain ``def start``: there it
        waits until the message is in the target's mailbox, so errors still
        raise here.

        Raises:
            NoProcess: no live process or meta answers to ``to``.
            MailboxFull: the target's bounded mailbox is full.
        """
        if self._mk_thread is not None and threading.get_ident() != self._mk_node._thread_id:
            self._mk_from_thread(self.send, to, message)
            return
        try:
            target = self._mk_table[to.id]  # type: ignore[union-attr]
        except (KeyError, AttributeError):
            target = self._mk_node._registry.route(to)
        self._mk_out += 1
        target._mk_post(self._mk_parent_proc._mk_pid, message)

    # -- the seam: what a meta's own I/O uses (DESIGN.md §7) ---------------------

    def send_system(self, to: Target, message: Any) -> None:
        """Deliver past the target's bound: a message its worker must not miss.

        For what a transport tells its worker once (a ``Connect``, a
        ``Disconnect``, an error report), never for a stream of data: that
        goes through :meth:`send` or :meth:`offer`, which the bound limits.

        Raises:
            NoProcess: no live process or meta answers to ``to``.
        """
        self._mk_node._registry.route(to)._mk_deliver_system(self._mk_parent_proc._mk_pid, message)
        self._mk_out += 1

    def offer(self, to: PID | Alias, message: Any, *, max_pending: int) -> bool:
        """Deliver unless the target's mailbox is full or holds ``max_pending``
        messages already; False, and nothing delivered, if so (or if it is gone).

        For a transport that may drop (UDP): the caller counts the drop. A
        target that is idle, with plain handlers, handles it inside this call
        (in the order its drain would keep), as a connection's read does.
        """
        target = self._mk_table.get(to.id)
        if target is None or not target._mk_offer(
            self._mk_parent_proc._mk_pid, message, max_pending
        ):
            return False
        self._mk_out += 1
        return True

    def call(
        self, to: Target, request: Any, timeout: float | None = 5.0, *, eager: bool = False
    ) -> asyncio.Future[Any]:
        """Call ``to``'s ``handle_call`` as the parent; await the result for the reply.

        As :meth:`Process.call <metakit.Process.call>` (the same errors).

        ``eager=True``: if ``to`` is idle (nothing queued, plain handlers),
        its ``handle_call`` runs inside this call, and the future comes back
        already answered unless it returned ``NO_REPLY``: no loop turn for
        the callee, none for the caller's wake-up. The order of messages is
        the one a drain would have kept. Awaiting a done future does not
        yield, so use it where the task yields anyway (a request handler
        that then writes its response), never in a loop that awaits nothing
        else: that loop would hold the event loop.
        """
        future = self._mk_node._call(
            self._mk_parent_proc._mk_pid, to, request, timeout, self, eager
        )
        self._mk_out += 1
        return future

    def hold_writes(self) -> None:
        """Take no more messages from the mailbox, after the current one, until
        :meth:`release_writes`: the object this meta writes to is full.

        Deliveries still queue up to the mailbox bound, where ``MailboxFull``
        pushes back on the senders. Exit signals wait too; ``"kill"`` does not.
        """
        self._mk_hold()

    def release_writes(self) -> None:
        """Take messages again (see :meth:`hold_writes`)."""
        self._mk_unhold()

    def exit(self, reason: Any = "normal") -> None:
        """End this meta now with ``reason``: ``terminate`` runs, links and
        monitors are told. For a transport callback that learns the object is
        gone; a handler may ``raise metakit.Stop(reason)`` instead."""
        self._mk_end(reason)

    def spawn_nowait(self, meta: Meta, *, mailbox_size: int = 0) -> Alias:
        """Start a meta whose ``init`` does nothing, owned by the same parent, without awaiting.

        For a server's protocol callback making one connection meta per
        accept; ``meta.init`` is not called.

        Raises:
            NodeNotRunning: the node is stopping.
        """
        return self._mk_node._actors.spawn_meta_now(meta, self._mk_parent_proc, mailbox_size)

    def create_task(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        """Run ``coro`` in a Task the node tracks: ``node.stop()`` waits for it.

        It is not cancelled when this meta ends: it is for work that outlives
        a plain ``terminate``, such as a graceful close that must await.
        """
        return self._mk_node._shutdown.track(coro, name or f"metakit {self._mk_alias!r} task")

    def reply(self, caller: Caller, value: Any) -> None:
        """Answer a call for which ``handle_call`` returned ``NO_REPLY``."""
        self._mk_reply(caller, value)

    async def spawn(self, meta: Meta, *, mailbox_size: int = 0) -> Alias:
        """Start another meta owned by the same parent process.

        From a plain ``def start`` thread, call :meth:`spawn_from_thread` instead.
        """
        return await self._mk_node._actors.spawn_meta(meta, self._mk_parent_proc, mailbox_size)

    def spawn_from_thread(self, meta: Meta, *, mailbox_size: int = 0) -> Alias:
        """:meth:`spawn` for the main-loop thread of a plain ``def start``; blocks."""
        future = asyncio.run_coroutine_threadsafe(
            self.spawn(meta, mailbox_size=mailbox_size), self._mk_loop
        )
        return future.result()

    def env(self, key: str, default: Any = None) -> Any:
        """The parent's environment (a meta has none of its own)."""
        return self._mk_node._env_lookup(self._mk_parent_proc, key, default)

    def _mk_from_thread(self, fn: Any, *args: Any) -> Any:
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as exc:
                result.set_exception(exc)

        try:
            self._mk_loop.call_soon_threadsafe(run)
        except RuntimeError as exc:  # the loop is closed
            raise NoProcess(args[0] if args else self._mk_alias) from exc
        # Wait in slices so a loop that stops for good cannot strand the thread.
        while True:
            try:
                return result.result(timeout=0.25)
            except TimeoutError:
                if self._mk_state == DEAD or self._mk_loop.is_closed():
                    raise ProcessExited(self._mk_alias, "terminated") from None

    # -- runtime ---------------------------------------------------------------

    def _mk_start_main(self) -> None:
        kind = self._mk_main_kind
        if kind == "task":
            self._mk_main = self._mk_loop.create_task(
                self._mk_run_task(), name=f"metakit main {self._mk_alias!r}"
            )
        elif kind == "thread":
            thread = threading.Thread(
                target=self._mk_run_thread, name=f"metakit {self._mk_alias!r}", daemon=True
            )
            self._mk_thread = thread
            self._mk_node._shutdown.threads.add(thread)
            thread.start()

    async def _mk_run_task(self) -> None:
        try:
            await self.start()  # type: ignore[misc]
        except asyncio.CancelledError:
            if self._mk_state == RUNNING:
                raise
            return
        except Exception as exc:
            if self._mk_state == RUNNING:
                self.log.error("main loop raised", exc_info=exc)
                self._mk_end(exc)
            return
        if self._mk_state == RUNNING:
            self._mk_end("normal")

    def _mk_run_thread(self) -> None:
        reason: Any = "normal"
        try:
            self.start()
        except BaseException as exc:
            reason = exc
        try:
            self._mk_loop.call_soon_threadsafe(self._mk_thread_done, reason)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    def _mk_thread_done(self, reason: Any) -> None:
        thread = self._mk_thread
        if thread is not None:
            # Its last act was to schedule this: it is returning. Join it, so a
            # thread counted as ended (node.stop() waits for that) is gone.
            thread.join(1.0)
        self._mk_node._shutdown.thread_ended(thread)
        if self._mk_state == RUNNING:
            if isinstance(reason, BaseException):
                self.log.error("main loop raised", exc_info=reason)
            self._mk_end(reason)

    def _mk_trap(self, sig: Signal) -> Any:
        if sig.link and sig.reason == "normal":
            return IGNORE
        return None

    def _mk_end(self, reason: Any) -> None:
        if self._mk_state >= EXITING:
            return
        self._mk_state = EXITING
        try:
            self.terminate(reason)
        except Exception:
            self.log.exception("exception in terminate")
        current = asyncio.current_task()
        main = self._mk_main
        if main is not None and main is not current:
            main.cancel()
        elif main is not None:
            # Ended from inside its own main loop (a handler its read ran at
            # once, or an exit of its own): stop it at its next await.
            self._mk_loop.call_soon(main.cancel)
        drain = self._mk_task  # a coroutine handler must not outlive terminate
        if drain is not None and drain is not current:
            drain.cancel()
        self._mk_node._actors.reap(self, reason)

    def _mk_kill(self) -> None:
        if self._mk_state >= EXITING:
            return
        self._mk_node._cancel_drain(self)
        self._mk_end("kill")

    def __repr__(self) -> str:
        alias = getattr(self, "_mk_alias", None)
        return f"<{type(self).__name__} {alias!r}>"
