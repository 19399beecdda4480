"""The mailbox half of every actor: queue, bound, scheduling and the drain loop.

Theory of operation
-------------------

Every runtime name on :class:`Mailbox`, :class:`~metakit.Process` and
:class:`~metakit.Meta` starts with ``_mk_``: those are the classes users
subclass, and an actor's own ``self._state`` or ``self._events`` must never
land in the runtime's slots.

:class:`Mailbox` is the base of :class:`~metakit.Process` and
:class:`~metakit.Meta`. Its queue is one ``deque`` holding each envelope as
two consecutive entries, sender then message: no tuple per message, because
a tracked allocation per message sets off the cyclic GC's young-generation
collections, which cost more than the whole hop. The sender's *class* tells
the drain what an envelope is, so the common case costs one identity test:

* ``PID`` — an ordinary message, for ``handle_message``;
* :class:`~metakit.messages.Caller` — a call, for ``handle_call``;
* :class:`Signal` — an exit signal.

Delivery (DESIGN.md §6) is a bound check, a ``deque.append`` and, only when
the actor is idle, one append to the node's ready list: a burst of messages
costs one scheduling, and waking a thousand idle actors (a broadcast) costs
a thousand appends and one ``loop.call_soon``, not a thousand Handles and
bound methods for the cyclic GC to trace. ``Process.send`` and ``Meta.send`` inline that code, and
``messages_in`` is counted once per drain, not per message: each attribute
touched per message shows in the throughput. Actors whose handlers are all plain functions drain in
that callback, with no Task or Future per message.

A few metas are *eager* (the TCP and WebSocket connections, the UDP
server): their handler is a short, non-blocking write to a transport, so
when ``send`` finds one idle (nothing queued, not held, not in init) it hands
the message to its handler right there, without queueing or scheduling. Order and one-at-a-time hold
as before; an echo saves a loop turn per message. Actors with a coroutine
handler drain in one Task per burst, which ends when the queue is empty, so
an idle actor holds no Task. Either way one actor runs one handler at a time.

A process handles exit signals before ordinary messages: they are inserted
after the signals already waiting at the front of the queue (``_mk_nurgent``
counts them). A meta-process handles them in order, so ``send_exit(conn,
"normal")`` never overtakes writes queued before it. ``"kill"`` acts at once.

Bounds are in deque entries (``_mk_limit`` is twice the mailbox size). A dead
actor has ``_mk_limit = -1``: every delivery then takes the slow branch, which
raises :class:`~metakit.errors.NoProcess` instead of ``MailboxFull``.
``send`` skips that check for unbounded targets (``_mk_cap == 0``): it found the
target in the routing table, which holds live actors only.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import sys
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ._flow import HOLD, FlowControl, Notify
from ._state import DEAD, EXITING, INIT, RUNNING
from ._state import STATE_NAMES as _STATE_NAMES
from .errors import MailboxFull, NoProcess, ProcessExited, Stop
from .ids import PID, Alias
from .messages import NO_REPLY, Caller

if TYPE_CHECKING:
    from .node import Node

__all__ = ["HOLD", "Mailbox", "Notify", "Signal"]

# Messages one drain handles before it yields the loop to other actors.
_BUDGET = 256

# The actor whose coroutine drain is running in the current task: lets
# Node.stop() notice it was awaited from inside a handler (it would wait for
# itself) and run in the background instead.
current_actor: contextvars.ContextVar[Mailbox | None] = contextvars.ContextVar(
    "metakit_current_actor", default=None
)


class Signal:
    """An exit signal in flight (internal envelope, never seen by handlers).

    Attributes:
        source: who sent it: a PID, an Alias, or an event name.
        sender: the PID a trapped ``Exit`` appears to come from.
        reason: the exit reason.
        link: ``True`` when it comes from a link (``"normal"`` is then ignored).
        forced: ``True`` when trapping cannot turn it into a message (node stop, parent).
    """

    __slots__ = ("forced", "link", "reason", "sender", "source")

    def __init__(
        self,
        source: PID | Alias | str,
        sender: PID,
        reason: Any,
        *,
        link: bool = False,
        forced: bool = False,
    ) -> None:
        self.source = source
        self.sender = sender
        self.reason = reason
        self.link = link
        self.forced = forced

    def __repr__(self) -> str:
        return f"<Signal {self.reason!r} from {self.source!r}>"


# What Mailbox._mk_trap returns for a signal that changes nothing (a link's "normal").
IGNORE: Any = object()


class _ActorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every record with the actor's id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['metakit_id']!r}: {msg}", kwargs  # type: ignore[index]


def _is_async(cls: type, name: str) -> bool:
    return inspect.iscoroutinefunction(getattr(cls, name, None))


class Mailbox(FlowControl):
    """Base of processes and meta-processes: a mailbox and the loop that drains it.

    Not instantiated directly; subclass :class:`~metakit.Process` or
    :class:`~metakit.Meta`.
    """

    __slots__ = (
        "__weakref__",
        "_mk_cap",
        "_mk_current_call",
        "_mk_deferred",
        "_mk_held",
        "_mk_in",
        "_mk_limit",
        "_mk_links",
        "_mk_log",
        "_mk_loop",
        "_mk_monitors",
        "_mk_node",
        "_mk_nurgent",
        "_mk_out",
        "_mk_q",
        "_mk_scheduled",
        "_mk_size",
        "_mk_state",
        "_mk_table",
        "_mk_task",
        "_mk_waiters",
        "_mk_watching",
    )

    # Decided once per class (DESIGN.md §3): do any handlers need a Task?
    _mk_async_mode: ClassVar[bool] = False
    _mk_call_is_async: ClassVar[bool] = False
    _mk_terminate_is_async: ClassVar[bool] = False
    # Processes take exit signals first; metas take them in order.
    _mk_signals_first: ClassVar[bool] = True
    # Drained at once when a send finds it idle: set by the network metas,
    # whose handler is a short non-blocking write (see the module docstring).
    _mk_eager: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        msg_async = _is_async(cls, "handle_message")
        cls._mk_call_is_async = _is_async(cls, "handle_call")
        cls._mk_terminate_is_async = _is_async(cls, "terminate")
        cls._mk_async_mode = msg_async or cls._mk_call_is_async or cls._mk_terminate_is_async
        if cls._mk_async_mode:
            cls._mk_eager = False  # a coroutine handler cannot run inside the sender

    # -- setup -------------------------------------------------------------

    def _mk_setup_mailbox(self, node: Node, mailbox_size: int) -> None:
        if mailbox_size < 0:
            raise ValueError(f"mailbox_size must be >= 0, not {mailbox_size}")
        self._mk_node = node
        self._mk_loop = node._mk_loop
        self._mk_table = node._mk_table
        self._mk_q: deque[Any] = deque()
        self._mk_size = mailbox_size
        self._mk_cap = 2 * mailbox_size
        self._mk_limit = self._mk_cap or sys.maxsize
        self._mk_nurgent = 0
        # True during init, so early messages wait until init has finished.
        self._mk_scheduled = True
        self._mk_state = INIT
        self._mk_task: asyncio.Task[None] | None = None
        self._mk_in = 0
        self._mk_out = 0
        self._mk_links: set[Mailbox] | None = None
        self._mk_monitors: dict[Any, Mailbox] | None = None
        self._mk_watching: dict[Any, Any] | None = None
        self._mk_held = False
        self._mk_deferred: set[Caller] | None = None
        self._mk_current_call: Caller | None = None
        self._mk_waiters: list[asyncio.Future[Any]] | None = None
        self._mk_log: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def _mk_ident(self) -> PID | Alias:
        raise NotImplementedError

    # -- delivery (the hot path) -----------------------------------------------

    def _mk_deliver(self, sender: Any, message: Any) -> None:
        q = self._mk_q
        if len(q) >= self._mk_limit:
            self._mk_refuse()
        q.append(sender)
        q.append(message)
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()

    def _mk_deliver_system(self, sender: Any, message: Any) -> None:
        """Deliver past the bound: Down and trapped exits must never be lost."""
        if self._mk_state == DEAD:
            return
        self._mk_q.append(sender)
        self._mk_q.append(message)
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()

    def _mk_refuse(self) -> None:
        if self._mk_state == DEAD:
            raise NoProcess(self._mk_ident)
        raise MailboxFull(self._mk_ident, self._mk_size)

    def _mk_kick(self) -> None:
        if self._mk_async_mode:
            self._mk_task = self._mk_loop.create_task(
                self._mk_drain_async(), name=f"metakit {self._mk_ident!r}"
            )
        else:
            # Node._ready, inlined: this runs on every wake-up of an idle actor.
            node = self._mk_node
            ready = node._ready_list
            ready.append(self)
            if len(ready) == 1:
                self._mk_loop.call_soon(node._run_ready)

    def _mk_signal(self, sig: Signal) -> None:
        """Take an exit signal: ``kill`` at once, others through the queue."""
        if self._mk_state >= EXITING:
            return
        if sig.reason == "kill":
            self._mk_kill()
            return
        if self._mk_signals_first:
            at = 2 * self._mk_nurgent
            self._mk_q.insert(at, None)
            self._mk_q.insert(at, sig)
            self._mk_nurgent += 1
        else:
            self._mk_q.append(sig)
            self._mk_q.append(None)
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()

    def _mk_release(self) -> None:
        """Let the drain start: called once init has finished."""
        self._mk_state = RUNNING
        self._mk_scheduled = bool(self._mk_q)
        if self._mk_scheduled:
            self._mk_kick()

    # -- the drain ---------------------------------------------------------------

    def _mk_drain(self) -> None:
        q = self._mk_q
        if len(q) == 2:
            # One message, the common case at light load: the loop below costs
            # more to set up (a bound method, a range) than the message itself.
            sender = q.popleft()
            message = q.popleft()
            self._mk_in += 1
            if sender.__class__ is PID:
                try:
                    self.handle_message(sender, message)  # type: ignore[attr-defined]
                except Exception as exc:
                    self._mk_end(self._mk_crash_reason(exc))
            else:
                self._mk_special(sender, message)
        else:
            handle = self.handle_message  # type: ignore[attr-defined]
            pid_class = PID
            n = len(q) >> 1
            if n > _BUDGET:
                n = _BUDGET
            handled = 0
            try:
                for handled in range(1, n + 1):  # noqa: B007 - read after the loop
                    sender = q.popleft()
                    message = q.popleft()
                    if sender.__class__ is pid_class:
                        try:
                            handle(sender, message)
                        except Exception as exc:
                            self._mk_end(self._mk_crash_reason(exc))
                            break
                    elif self._mk_special(sender, message):
                        break
            except IndexError:
                pass  # a handler killed this actor, which emptied the queue
            self._mk_in += handled
        if self._mk_held:
            return  # _mk_scheduled stays True: nothing restarts the drain but _mk_unhold
        if q and self._mk_state == RUNNING:
            self._mk_node._ready(self)  # over budget: again after the others
        else:
            self._mk_scheduled = False

    def _mk_run_now(self, handler: Callable[[Any, Any], None], a: Any, b: Any) -> None:
        """Run ``handler(a, b)`` (``handle_message`` or a write) at once: a send
        found this eager meta idle.

        Idle means nothing is queued (held and initialising actors count as
        scheduled), so running it now keeps the order a drain would have.
        """
        self._mk_scheduled = True
        self._mk_in += 1
        try:
            handler(a, b)
        except Exception as exc:
            self._mk_end(self._mk_crash_reason(exc))
            return
        if self._mk_held:
            return  # it stays scheduled until _mk_unhold
        if self._mk_q and self._mk_state == RUNNING:
            self._mk_node._ready(self)  # something arrived meanwhile (a Down...)
        else:
            self._mk_scheduled = False

    def _mk_special(self, sender: Any, message: Any) -> bool:
        """Handle anything but a message in a plain drain; True to stop draining."""
        if sender.__class__ is Caller:
            future = sender._future
            if future.done():
                return False  # the caller gave up; do not run the request
            self._mk_current_call = sender
            try:
                result = self.handle_call(sender, message)  # type: ignore[attr-defined]
            except Stop as stop:
                self._mk_end(stop.reason)
                return True
            except Exception as exc:
                future.set_exception(exc)
                self._mk_current_call = None
                return False
            self._mk_current_call = None
            # Nothing can settle the future during a plain handler: answer directly.
            if result is NO_REPLY:
                self._mk_answer(sender, result)
            else:
                future.set_result(result)
            return False
        if sender.__class__ is Notify:
            sender.callback()
            return False
        if sender is HOLD:
            return True
        self._mk_nurgent -= self._mk_signals_first
        trapped = self._mk_trap(sender)
        if trapped is None:
            self._mk_end(sender.reason)
            return True
        if trapped is IGNORE:
            return False
        try:
            self.handle_message(sender.sender, trapped)  # type: ignore[attr-defined]
        except Exception as exc:
            self._mk_end(self._mk_crash_reason(exc))
            return True
        return False

    async def _mk_drain_async(self) -> None:
        token = current_actor.set(self)
        try:
            await self._mk_drain_async_loop()
        except asyncio.CancelledError:
            # Cancelled by a kill: the actor is already reaped.
            if self._mk_state != DEAD:
                raise
        finally:
            current_actor.reset(token)
            if self._mk_task is asyncio.current_task():
                self._mk_task = None

    async def _mk_drain_async_loop(self) -> None:
        q = self._mk_q
        handle = self.handle_message  # type: ignore[attr-defined]
        pid_class = PID
        budget = _BUDGET
        while q and self._mk_state == RUNNING:
            sender = q.popleft()
            message = q.popleft()
            self._mk_in += 1
            if sender.__class__ is pid_class:
                try:
                    result = handle(sender, message)
                    if result is not None:
                        await result
                except Exception as exc:
                    await self._mk_end_async(self._mk_crash_reason(exc))
                    break
            elif await self._mk_special_async(sender, message):
                break
            budget -= 1
            if not budget:
                budget = _BUDGET
                # Let other actors run: a coroutine that never suspends would
                # otherwise hold the loop for the whole burst.
                await asyncio.sleep(0)
        if not self._mk_held:
            self._mk_scheduled = False

    async def _mk_special_async(self, sender: Any, message: Any) -> bool:
        if sender.__class__ is Notify:
            sender.callback()
            return False
        if sender is HOLD:
            return True
        if sender.__class__ is Caller:
            if sender.done:
                return False
            self._mk_current_call = sender
            try:
                result = self.handle_call(sender, message)  # type: ignore[attr-defined]
                if self._mk_call_is_async:
                    result = await result
            except Stop as stop:
                await self._mk_end_async(stop.reason)
                return True
            except Exception as exc:
                sender._fail(exc)
                return False
            finally:
                self._mk_current_call = None
            self._mk_answer(sender, result)
            return False
        self._mk_nurgent -= self._mk_signals_first
        trapped = self._mk_trap(sender)
        if trapped is None:
            await self._mk_end_async(sender.reason)
            return True
        if trapped is IGNORE:
            return False
        try:
            result = self.handle_message(sender.sender, trapped)  # type: ignore[attr-defined]
            if result is not None:
                await result
        except Exception as exc:
            await self._mk_end_async(self._mk_crash_reason(exc))
            return True
        return False

    def _mk_answer(self, caller: Caller, result: Any) -> None:
        if result is NO_REPLY:
            if self._mk_deferred is None:
                self._mk_deferred = set()
            self._mk_deferred.add(caller)
        else:
            caller._resolve(result)

    # -- ending (the subclasses say how) -----------------------------------------

    def _mk_crash_reason(self, exc: Exception) -> Any:
        if isinstance(exc, Stop):
            return exc.reason
        self.log.error("terminated by an exception in a handler", exc_info=exc)
        return exc

    def _mk_trap(self, sig: Signal) -> Any:
        """What a dequeued signal does: a message to handle, IGNORE, or None to end."""
        raise NotImplementedError

    def _mk_end(self, reason: Any) -> None:
        raise NotImplementedError

    async def _mk_end_async(self, reason: Any) -> None:
        self._mk_end(reason)

    def _mk_kill(self) -> None:
        raise NotImplementedError

    def _mk_fail_calls(self, reason: Any) -> None:
        """Every call this actor holds gets ProcessExited: queued, deferred, running."""
        exc = ProcessExited(self._mk_ident, reason)
        for sender in self._mk_q:
            if sender.__class__ is Caller:
                sender._fail(exc)
        self._mk_q.clear()
        self._mk_nurgent = 0
        if self._mk_deferred:
            for caller in self._mk_deferred:
                caller._fail(exc)
            self._mk_deferred = None
        if self._mk_current_call is not None:
            self._mk_current_call._fail(exc)
            self._mk_current_call = None

    def _mk_reply(self, caller: Caller, value: Any) -> None:
        if self._mk_deferred is not None:
            self._mk_deferred.discard(caller)
        caller._resolve(value)

    # -- introspection -------------------------------------------------------

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A stdlib logger adapter that prefixes each record with this actor's id."""
        log = self._mk_log
        if log is None:
            log = self._mk_log = _ActorLog(self._mk_node._logger, {"metakit_id": self._mk_ident})
        return log

    @property
    def _mk_mailbox_len(self) -> int:
        return len(self._mk_q) >> 1

    @property
    def _mk_state_name(self) -> str:
        if self._mk_state == RUNNING:
            return "running" if self._mk_scheduled else "idle"
        return _STATE_NAMES[self._mk_state]
