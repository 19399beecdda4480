"""The mailbox half of every actor: the envelope, delivery, flow markers and the drain.

Theory of operation
-------------------

This is the one module that knows the envelope layout; everything else
delivers through the ``Mailbox._mk_*`` methods below (DESIGN.md §7).

Every runtime name on :class:`Mailbox`, :class:`~metakit.Process` and
:class:`~metakit.Meta` starts with ``_mk_``: those are the classes users
subclass, and an actor's own ``self._state`` or ``self._events`` must never
land in the runtime's slots.

The queue is one ``deque`` holding each envelope as two consecutive entries,
sender then message: no tuple per message, because a tracked allocation per
message sets off the cyclic GC's young-generation collections, which cost
more than the whole hop. The sender's *class* tells the drain what an
envelope is, so the common case costs one identity test:

* ``PID`` — an ordinary message, for ``handle_message``;
* :class:`~metakit.messages.Caller` — a call, for ``handle_call``;
* :class:`Signal` — an exit signal;
* :class:`Notify` — a marker: run a callback when the drain gets there;
* ``HOLD`` — the drain stops here while the actor is held.

An idle actor holds no queue: an empty ``deque`` is 760 bytes, two thirds of
an idle process, so the drain that empties one hands it to the node's spares
and points the actor at :data:`IDLE`, one shared, always-empty queue that
refuses writes; the delivery that finds ``IDLE`` takes a spare. That is one
identity test per delivery and a list pop and append per wake-up.

Delivery (DESIGN.md §6) is a bound check, a ``deque.append`` and, only when
the actor is idle, one append to the scheduler's ready list: a burst costs
one scheduling. Actors whose handlers are all plain functions drain in that
callback, with no Task or Future per message; those with a coroutine
handler drain in one Task per burst, which ends when the queue is empty.
``messages_in`` is counted once per drain, not per message.

A few metas are *eager* (the connections, the UDP server): their handler
is a short, non-blocking write, so when a send finds one idle (nothing
queued, not held, not in init) it runs the handler right there
(:meth:`Mailbox._mk_post`). Order and one-at-a-time hold as before; an echo
saves a loop turn per message. ``Process.send`` is :func:`process_send`, the
same hop inlined (it runs for every message); ``tests/test_mailbox.py`` runs
both side by side. The other way, a connection's read finds its worker idle
(and its handlers plain) and runs ``handle_message`` inside the read
(:func:`connection_read`, :func:`connection_feed_one`); and an eager call
(``Meta.call(..., eager=True)``, the web bridge's) runs ``handle_call``
inside the call (:meth:`Mailbox._mk_call_now`). Both are
:meth:`Mailbox._mk_run_now`, under the same rule: idle means nothing
queued and no drain due, so the order is the one a drain would keep.

A process handles exit signals before ordinary messages: they are inserted
after the signals already waiting at the front (``_mk_nurgent`` counts them).
A meta handles them in order, so ``send_exit(conn, "normal")`` never
overtakes writes queued before it. ``"kill"`` acts at once.

Bounds are in deque entries (``_mk_limit`` is twice the mailbox size). A dead
actor has ``_mk_limit = -1``: every delivery then takes the slow branch, which
raises :class:`~metakit.errors.NoProcess` instead of ``MailboxFull``.
``send`` skips that check for unbounded targets (``_mk_cap == 0``): it found the
target in the routing table, which holds live actors only.

Flow control never touches the hot path: a :class:`Notify` marker placed
``behind`` messages from the end of a worker's mailbox tells a connection
the worker has caught up (resume reading) or has handled its Disconnect;
holding (``_mk_hold``/``_mk_unhold``) stops an actor's drain while the object
it writes to is full, so its bounded mailbox pushes back on senders.
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

from ._envelope import HOLD, IGNORE, Notify, Signal
from ._state import DEAD, EXITING, INIT, RUNNING, State
from .errors import CallTimeout, FramingError, MailboxFull, NoProcess, ProcessExited, Stop
from .ids import PID, Alias
from .messages import NO_REPLY, Caller

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from .node import Node

__all__ = [
    "IDLE",
    "Mailbox",
    "connection_feed_one",
    "connection_read",
    "current_actor",
    "node_send",
    "process_send",
]

# Messages one drain handles before it yields the loop to other actors.
_BUDGET = 256

# Empty queues a node keeps for actors waking up (see _Idle).
_SPARE_MAX = 256


class _Idle(deque):  # type: ignore[type-arg]
    """The one queue every idle actor shares: always empty.

    A ``deque`` costs 760 bytes even when empty, two thirds of an idle
    process. So an actor whose drain empties its queue gives it to the
    node's spares (``Scheduler.spare``) and points at this one; a delivery
    that finds it takes a spare first. Writing to it would mix two actors'
    mail, so it refuses.
    """

    __slots__ = ()

    def _refuse(self, *args: Any) -> None:
        raise RuntimeError("metakit: a delivery wrote to the shared idle queue")

    append = appendleft = extend = extendleft = insert = _refuse


IDLE: deque[Any] = _Idle()

_CAPS: dict[int, int] = {}  # mailbox_size -> its bound in queue entries, shared

# The actor whose coroutine drain is running in the current task: lets
# Node.stop() notice it was awaited from inside a handler (it would wait for
# itself) and run in the background instead.
current_actor: contextvars.ContextVar[Mailbox | None] = contextvars.ContextVar(
    "metakit_current_actor", default=None
)


class _ActorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every record with the actor's id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['metakit_id']!r}: {msg}", kwargs  # type: ignore[index]


class _Abandoned(Exception):
    """A coroutine handle_call was cancelled because its caller stopped waiting."""


def _is_async(cls: type, name: str) -> bool:
    return inspect.iscoroutinefunction(getattr(cls, name, None))


class Mailbox:
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
        "_mk_ident",
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
        "_mk_sched",
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
    # Drained at once when a send finds it idle (see the module docstring).
    _mk_eager: ClassVar[bool] = False
    # True for a cluster's stand-in for an actor on another node (_registry.py).
    _mk_remote: ClassVar[bool] = False
    # A connection's read may run its handler at once when it is idle: plain
    # handlers only, and a local actor (see connection_read).
    _mk_inline: ClassVar[bool] = True

    if TYPE_CHECKING:
        # What Process and Meta each define: how a signal is taken, how it ends.
        _mk_ident: PID | Alias

        def _mk_trap(self, sig: Signal) -> Any: ...
        def _mk_end(self, reason: Any) -> None: ...
        def _mk_kill(self) -> None: ...
        def handle_message(self, sender: PID, message: Any) -> Any: ...
        def handle_call(self, sender: Caller, request: Any) -> Any: ...

        # A cluster's stand-in for a remote actor (_mk_remote) tells its node.
        def _mk_remote_link(self, other: Mailbox) -> None: ...
        def _mk_remote_unlink(self, other: Mailbox) -> None: ...
        def _mk_remote_monitor(self, watcher: Mailbox, ref: Any) -> None: ...
        def _mk_remote_demonitor(self, ref: Any) -> None: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        msg_async = _is_async(cls, "handle_message")
        cls._mk_call_is_async = _is_async(cls, "handle_call")
        cls._mk_terminate_is_async = _is_async(cls, "terminate")
        cls._mk_async_mode = msg_async or cls._mk_call_is_async or cls._mk_terminate_is_async
        if cls._mk_async_mode:
            cls._mk_eager = False  # a coroutine handler cannot run inside the sender
        cls._mk_inline = not cls._mk_async_mode and not cls._mk_remote

    # -- setup -------------------------------------------------------------

    def _mk_setup_mailbox(self, node: Node, ident: PID | Alias, mailbox_size: int) -> None:
        if mailbox_size < 0:
            raise ValueError(f"mailbox_size must be >= 0, not {mailbox_size}")
        self._mk_node = node
        self._mk_ident = ident
        self._mk_loop = node._loop
        self._mk_sched: Scheduler = node._scheduler
        self._mk_table = node._registry.table
        self._mk_q: deque[Any] = IDLE
        self._mk_size = mailbox_size
        # One int object per size, not one per actor (32 bytes past 128).
        cap = _CAPS.get(mailbox_size)
        if cap is None:
            cap = 2 * mailbox_size
            if len(_CAPS) < 64:
                _CAPS[mailbox_size] = cap
        self._mk_cap = cap
        self._mk_limit = self._mk_cap or sys.maxsize
        self._mk_nurgent = 0
        # True during init, so early messages wait until init has finished.
        self._mk_scheduled = True
        self._mk_state: State = INIT
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

    # -- delivery (the hot path) -----------------------------------------------

    def _mk_deliver(self, sender: Any, message: Any) -> None:
        """Queue one message; MailboxFull past the bound, NoProcess if dead."""
        q = self._mk_q
        if len(q) >= self._mk_limit:
            self._mk_refuse()
        if q is IDLE:
            q = self._mk_queue()
        q.append(sender)
        q.append(message)
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()

    def _mk_post(self, sender: PID, message: Any) -> None:
        """:meth:`_mk_deliver`, but an idle eager meta handles it at once (the
        readable original of :func:`process_send`)."""
        if not self._mk_scheduled and self._mk_eager:
            self._mk_run_now(self.handle_message, sender, message)
            return
        self._mk_deliver(sender, message)

    def _mk_deliver_system(self, sender: Any, message: Any) -> None:
        """Deliver past the bound: Down, trapped exits, a Connect/Disconnect must never be lost."""
        if self._mk_state == DEAD:
            return
        q = self._mk_queue()
        q.append(sender)
        q.append(message)
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()

    def _mk_offer(self, sender: Any, message: Any, max_pending: int) -> bool:
        """Queue unless full or already ``max_pending`` deep; False (nothing queued) if not.

        An idle actor with plain handlers handles it at once, as a
        connection's read does (:func:`connection_read`).
        """
        q = self._mk_q
        if len(q) >= 2 * max_pending or len(q) >= self._mk_limit:
            return False
        if not self._mk_scheduled and self._mk_inline:
            self._mk_run_now(self.handle_message, sender, message)
            return True
        if q is IDLE:
            q = self._mk_queue()
        q.append(sender)
        q.append(message)
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()
        return True

    def _mk_feed(
        self, sender: Any, make: Callable[[Any, Any], Any], conn: Any, frames: list[Any], high: int
    ) -> int:
        """Queue ``make(conn, frame)`` for each frame, in order, while under the
        bound (and, after the first, under ``high`` pending): a connection's read.

        Returns how many it took, or ``~taken`` (negative) when the reader must
        pause: the mailbox is past ``high`` or could not take them all. One
        frame for an idle actor with plain handlers is handled at once, as
        :meth:`_mk_offer` does (the handler may end the connection).
        """
        q = self._mk_q
        limit = self._mk_limit
        if len(frames) == 1 and not self._mk_scheduled and self._mk_inline and limit > 0:
            self._mk_run_now(self.handle_message, sender, make(conn, frames[0]))
            return 1  # (a dead actor's limit is -1: it takes the branch below)
        if q is IDLE:
            q = self._mk_queue()
        high2 = 2 * high
        if len(frames) == 1:  # the common case: one frame per read
            if len(q) >= limit:
                return ~0
            q.append(sender)
            q.append(make(conn, frames[0]))
            taken = 1
        else:
            taken = 0
            for frame in frames:
                # One read may hold hundreds of frames: past the high watermark
                # the rest wait in the connection, as when the mailbox is full.
                if len(q) >= limit or len(q) > high2:
                    break
                q.append(sender)
                q.append(make(conn, frame))
                taken += 1
        if taken and not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()
        if len(q) > high2 or taken < len(frames):
            return ~taken
        return taken

    def _mk_call(
        self, pid: PID, request: Any, future: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Any]:
        """Queue a call from ``pid``; the future its answer settles (``future``
        if given: a call from another node brings its own)."""
        q = self._mk_q
        if self._mk_cap and len(q) >= self._mk_cap:
            self._mk_refuse()
        if future is None:
            future = self._mk_loop.create_future()
        if q is IDLE:
            q = self._mk_queue()
        q.append(Caller(pid, future))
        q.append(request)
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()
        return future

    def _mk_call_now(self, pid: PID, request: Any) -> asyncio.Future[Any] | None:
        """Answer a call from ``pid`` at once if this plain actor is idle: the
        future, settled unless ``handle_call`` returned NO_REPLY. None if it is
        not idle (or has coroutine handlers): nothing was done, queue it.

        Idle means nothing is queued and no drain is due (held and
        initialising actors count as scheduled), so answering now keeps the
        order a drain would have, as :meth:`_mk_run_now` does for a send.
        """
        # (_mk_inline: plain handlers, and not a stand-in for a remote actor.)
        if self._mk_scheduled or not self._mk_inline or self._mk_state != RUNNING:
            return None
        future = self._mk_loop.create_future()
        # _mk_special answers the Caller (or fails it) and never raises an Exception.
        self._mk_run_now(self._mk_special, Caller(pid, future), request)
        return future

    def _mk_queue(self) -> deque[Any]:
        """This actor's own queue: a spare one if it had none (it was idle)."""
        q = self._mk_q
        if q is IDLE:
            spare = self._mk_sched.spare
            q = self._mk_q = spare.pop() if spare else deque()
        return q

    def _mk_spare(self, q: deque[Any]) -> None:
        """The drain emptied ``q``: give it to the node's spares (see :class:`_Idle`)."""
        if q is not IDLE:
            self._mk_q = IDLE
            spare = self._mk_sched.spare
            if len(spare) < _SPARE_MAX:
                spare.append(q)

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
            # Scheduler.schedule, inlined: this runs on every wake-up of an idle actor.
            sched = self._mk_sched
            ready = sched.ready
            ready.append(self)
            if len(ready) == 1:
                self._mk_loop.call_soon(sched.run)

    def _mk_signal(self, sig: Signal) -> None:
        """Take an exit signal: ``kill`` at once, others through the queue."""
        if self._mk_state >= EXITING:
            return
        if sig.reason == "kill":
            self._mk_kill()
            return
        q = self._mk_queue()
        if self._mk_signals_first:
            at = 2 * self._mk_nurgent
            q.insert(at, None)
            q.insert(at, sig)
            self._mk_nurgent += 1
        else:
            q.append(sig)
            q.append(None)
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()

    def _mk_release(self) -> None:
        """Let the drain start: called once init has finished."""
        self._mk_state = RUNNING
        self._mk_scheduled = bool(self._mk_q)
        if self._mk_scheduled:
            self._mk_kick()

    # -- flow control: markers and holds -------------------------------------

    def _mk_notify(self, callback: Callable[[], Any], behind: int = 0) -> bool:
        """Run ``callback()`` when the drain gets to ``behind`` messages from the end.

        False (and never called) if the actor is dead; the marker goes with
        the mailbox if the actor dies first.
        """
        if self._mk_state == DEAD:
            return False
        q = self._mk_queue()
        at = max(len(q) - 2 * behind, 2 * self._mk_nurgent)
        q.insert(at, None)
        q.insert(at, Notify(callback))
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()
        return True

    def _mk_hold(self) -> None:
        """Stop draining after the current message, until :meth:`_mk_unhold`.

        Deliveries still queue (up to the bound), so the bound pushes back.
        """
        if self._mk_held or self._mk_state == DEAD:
            return
        self._mk_held = True
        self._mk_scheduled = True
        q = self._mk_queue()
        q.appendleft(None)
        q.appendleft(HOLD)
        if self._mk_cap:  # the marker must not take a bounded mailbox's place
            self._mk_cap += 2
            self._mk_limit += 2

    def _mk_unhold(self) -> None:
        if not self._mk_held:
            return
        self._mk_held = False
        if self._mk_cap:
            self._mk_cap -= 2
            if self._mk_limit > 0:
                self._mk_limit -= 2
        q = self._mk_q
        if q and q[0] is HOLD:
            q.popleft()
            q.popleft()
        self._mk_scheduled = bool(q) and self._mk_state == RUNNING
        if self._mk_scheduled:
            self._mk_kick()

    def _mk_withdraw(self, match: Callable[[Any], bool]) -> None:
        """Take back the first queued ordinary message ``match`` accepts."""
        q = self._mk_q
        for i in range(1, len(q), 2):
            if q[i - 1].__class__ is PID and match(q[i]):
                del q[i]
                del q[i - 1]
                return

    @property
    def _mk_pending(self) -> int:
        """Messages waiting (markers included)."""
        return len(self._mk_q) >> 1

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
                    self.handle_message(sender, message)
                except Exception as exc:
                    self._mk_end(self._mk_crash_reason(exc))
            else:
                self._mk_special(sender, message)
        else:
            handle = self.handle_message
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
            self._mk_sched.schedule(self)  # over budget: again after the others
        else:
            self._mk_scheduled = False
            if not q and q is not IDLE:
                # _mk_spare, inlined: this runs whenever an actor goes idle.
                self._mk_q = IDLE
                spare = self._mk_sched.spare
                if len(spare) < _SPARE_MAX:
                    spare.append(q)

    def _mk_run_now(self, handler: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
        """Run ``handler(a, b)`` at once: a send found this eager meta idle (a
        write), a connection's read or an offer found this worker idle
        (``handle_message``), an eager call found it idle (``_mk_special``).
        Returns what the handler returned (None if it raised: the actor has
        ended).

        Idle means nothing is queued (held and initialising actors count as
        scheduled), so running it now keeps the order a drain would have.
        """
        self._mk_scheduled = True
        self._mk_in += 1
        try:
            result = handler(a, b)
        except Exception as exc:
            self._mk_end(self._mk_crash_reason(exc))
            return None
        if self._mk_held:
            return result  # it stays scheduled until _mk_unhold
        q = self._mk_q
        if q and self._mk_state == RUNNING:
            self._mk_sched.schedule(self)  # something arrived meanwhile (a Down...)
        else:
            self._mk_scheduled = False
            if not q and q is not IDLE:  # (an idle actor had no queue to give back)
                self._mk_spare(q)
        return result

    def _mk_special(self, sender: Any, message: Any) -> bool:
        """Handle anything but a message in a plain drain; True to stop draining."""
        if sender.__class__ is Caller:
            future = sender._future
            if future.done():
                return False  # the caller gave up; do not run the request
            self._mk_current_call = sender
            try:
                result = self.handle_call(sender, message)
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
            self.handle_message(sender.sender, trapped)
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
        handle = self.handle_message
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
            if not q:
                self._mk_spare(q)

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
                result = self.handle_call(sender, message)
                if self._mk_call_is_async:
                    result = await self._mk_await_call(sender, result)
            except _Abandoned:
                return False
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
            result = self.handle_message(sender.sender, trapped)
            if result is not None:
                await result
        except Exception as exc:
            await self._mk_end_async(self._mk_crash_reason(exc))
            return True
        return False

    async def _mk_await_call(self, caller: Caller, handler: Any) -> Any:
        """Await a coroutine ``handle_call``; cancel it if its caller stops waiting.

        A caller that timed out or was cancelled wants no answer: the handler
        still working on it is cancelled (``CancelledError`` at its ``await``),
        so the calls queued behind it are served rather than timing out too.
        The drain task is cancelled and uncancelled as ``asyncio.timeout`` does.
        """
        task = asyncio.current_task()
        assert task is not None
        abandoned = False

        def give_up(future: asyncio.Future[Any]) -> None:
            nonlocal abandoned
            # Still on this call (the callback runs from the loop, so the task
            # is suspended inside the handler) and given up, not answered.
            if (
                self._mk_current_call is caller
                and self._mk_state == RUNNING
                and (future.cancelled() or future.exception().__class__ is CallTimeout)
            ):
                abandoned = True
                task.cancel()

        future = caller._future
        future.add_done_callback(give_up)
        try:
            return await handler
        except asyncio.CancelledError:
            if abandoned and self._mk_state == RUNNING:
                raise _Abandoned from None
            raise
        finally:
            future.remove_done_callback(give_up)
            if abandoned:
                task.uncancel()

    def _mk_answer(self, caller: Caller, result: Any) -> None:
        if result is NO_REPLY:
            if self._mk_deferred is None:
                self._mk_deferred = set()
            self._mk_deferred.add(caller)
        else:
            caller._resolve(result)

    # -- ending (Process and Meta say how) ----------------------------------------

    def _mk_crash_reason(self, exc: Exception) -> Any:
        if isinstance(exc, Stop):
            return exc.reason
        self.log.error("terminated by an exception in a handler", exc_info=exc)
        return exc

    async def _mk_end_async(self, reason: Any) -> None:
        self._mk_end(reason)

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
    def _mk_state_name(self) -> str:
        if self._mk_state == RUNNING:
            return "running" if self._mk_scheduled else "idle"
        return self._mk_state.label


def process_send(self: Any, to: Any, message: Any) -> None:
    """Send ``message`` to a PID, an Alias or a registered name; never blocks.

    Raises:
        NoProcess: no live process or meta answers to ``to``.
        MailboxFull: the target's bounded mailbox is full; nothing was delivered.
    """
    # Process.send: the routing lookup and Mailbox._mk_post (with _mk_run_now
    # and _mk_deliver) inlined, for it runs for every message; the copy is
    # tested against the original in tests/test_mailbox.py.
    # PID and Alias carry the int key of the routing table; a name (or
    # anything else) has no .id and takes the slow path.
    try:
        target = self._mk_table[to.id]
    except (KeyError, AttributeError):
        target = self._mk_node._registry.route(to)
        if target._mk_remote:  # another node's: the stand-in encodes and queues it
            target._mk_deliver(self._mk_pid, message)
            self._mk_out += 1
            return
    if not target._mk_scheduled and target._mk_eager:
        # An idle eager meta writes now (idle: nothing queued, so no bound to check).
        self._mk_out += 1
        target._mk_scheduled = True
        target._mk_in += 1
        try:
            target.handle_message(self._mk_pid, message)
        except Exception as exc:
            target._mk_end(target._mk_crash_reason(exc))
            return
        if target._mk_held:
            return  # it stays scheduled until _mk_unhold
        if target._mk_q and target._mk_state == RUNNING:
            target._mk_sched.schedule(target)  # something arrived meanwhile
        else:
            target._mk_scheduled = False
        return
    q = target._mk_q
    # Whatever is in the table is alive: only a bounded mailbox needs a check.
    if target._mk_cap and len(q) >= target._mk_cap:
        target._mk_refuse()
    if q is IDLE:  # Mailbox._mk_queue, inlined
        spare = target._mk_sched.spare
        q = target._mk_q = spare.pop() if spare else deque()
    self._mk_out += 1
    q.append(self._mk_pid)
    q.append(message)
    if not target._mk_scheduled:
        target._mk_scheduled = True
        target._mk_kick()


def node_send(self: Any, to: Any, message: Any) -> None:
    """Send from outside any process (the sender is :attr:`~metakit.Node.pid`).

    Raises:
        NoProcess: nothing answers to ``to``.
        MailboxFull: the target's bounded mailbox is full.
    """
    # Node.send: the routing lookup and Mailbox._mk_deliver inlined, as in
    # process_send, so a send from outside costs what a process's does. Unlike
    # Process.send it always queues: an idle eager meta runs on the next turn.
    try:
        target = self._registry.table[to.id]
    except (KeyError, AttributeError):
        target = self._registry.route(to)
        if target._mk_remote:  # another node's: the stand-in encodes and queues it
            target._mk_deliver(self._pid, message)
            return
    q = target._mk_q
    if len(q) >= target._mk_limit:
        target._mk_refuse()
    if q is IDLE:  # Mailbox._mk_queue, inlined
        spare = target._mk_sched.spare
        q = target._mk_q = spare.pop() if spare else deque()
    q.append(self._pid)
    q.append(message)
    if not target._mk_scheduled:
        target._mk_scheduled = True
        target._mk_kick()


def connection_read(self: Any, data: bytes) -> None:
    """A read: frame it and hand each frame to the worker (the hot path).

    ``Connection.data_received``: the framer, then ``Connection.feed`` with
    its common case inlined: one frame, nothing parked, room in the worker's
    mailbox (an idle worker handles it at once, as in ``feed``). Anything
    else goes through ``feed``, the original.
    """
    try:
        frames = self.framer.feed(data)
    except FramingError as exc:
        self._mk_framing_error(exc)
        return
    self._mk_bytes_in += len(data)
    worker = self._mk_worker
    if not frames or worker is None:  # None: a refused connection, closing
        return
    if len(frames) == 1 and not self._mk_backlog:
        q = worker._mk_q
        if len(q) < worker._mk_limit:  # (a dead worker's limit is -1)
            if not worker._mk_scheduled and worker._mk_inline:
                # The worker is idle: handle the frame now, as its drain would
                # next turn (Mailbox._mk_run_now). A loop turn less per frame.
                self._mk_out += 1
                worker._mk_run_now(
                    worker.handle_message, self._mk_sender, self._mk_make(self._mk_alias, frames[0])
                )
                return
            if q is IDLE:
                q = worker._mk_queue()
            q.append(self._mk_sender)
            q.append(self._mk_make(self._mk_alias, frames[0]))
            self._mk_out += 1
            if not worker._mk_scheduled:
                worker._mk_scheduled = True
                worker._mk_kick()
            if len(q) > self._mk_high2 and not self._mk_paused:
                self._mk_pause()
            return
    self.feed(frames)


def connection_feed_one(self: Any, frame: Any, nbytes: int = 0) -> None:
    """Hand one frame (read as ``nbytes``) to the worker, with back-pressure.

    ``Connection.feed_one``: ``Connection.feed([frame], nbytes)`` with its
    common case inlined (nothing parked, room in the worker's mailbox; an
    idle worker handles it at once); the rest goes through ``feed``, the
    original.
    """
    self._mk_bytes_in += nbytes
    worker = self._mk_worker
    if worker is not None and not self._mk_backlog:
        q = worker._mk_q
        if len(q) < worker._mk_limit:
            if not worker._mk_scheduled and worker._mk_inline:  # idle: as connection_read
                self._mk_out += 1
                worker._mk_run_now(
                    worker.handle_message, self._mk_sender, self._mk_make(self._mk_alias, frame)
                )
                return
            if q is IDLE:
                q = worker._mk_queue()
            q.append(self._mk_sender)
            q.append(self._mk_make(self._mk_alias, frame))
            self._mk_out += 1
            if not worker._mk_scheduled:
                worker._mk_scheduled = True
                worker._mk_kick()
            if len(q) > self._mk_high2 and not self._mk_paused:
                self._mk_pause()
            return
    self.feed([frame])
