"""Supervisor: starts child processes and restarts them when they end.

Strategies, as in OTP:

* ``"one_for_one"``: only the child that ended is restarted;
* ``"one_for_all"``: every other child is stopped, then all are started again;
* ``"rest_for_one"``: the children started after it are stopped, then it and
  they are started again.

Restart types: ``"permanent"`` children are always restarted,
``"transient"`` ones only after an abnormal exit (not ``"normal"`` or
``"shutdown"``), ``"temporary"`` ones never. More than ``max_restarts``
restarts within ``max_seconds`` and the supervisor gives up: it stops its
children and exits with :class:`~metakit.TooManyRestarts`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .errors import NodeNotRunning, Stop, TooManyRestarts
from .ids import PID
from .messages import Caller, Exit
from .process import Process

__all__ = ["ChildSpec", "StartChild", "Supervisor"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Restart = Literal["permanent", "transient", "temporary"]


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How a supervisor starts one child.

    Attributes:
        cls: the Process subclass.
        args: positional arguments for its ``init``.
        kwargs: keyword arguments for its ``init``.
        name: register the child under this name (re-registered on restart).
        restart: ``"permanent"``, ``"transient"`` or ``"temporary"``.
        shutdown: seconds to wait for the child to stop before killing it.
        mailbox_size: the child's mailbox bound (0: unbounded).
    """

    cls: type[Process]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    restart: Restart = "permanent"
    shutdown: float = 5.0
    mailbox_size: int = 0

    def __post_init__(self) -> None:
        if self.restart not in ("permanent", "transient", "temporary"):
            raise ValueError(f"restart must be permanent, transient or temporary: {self.restart!r}")


@dataclass(frozen=True, slots=True)
class StartChild:
    """Call a supervisor with this to start one more child; the reply is its PID.

    ``pid = await self.call(sup, StartChild(ChildSpec(Room, args=("lobby",), name="room:lobby")))``.
    The child is supervised like the others (its restart type applies) and
    goes after them in the order of ``rest_for_one`` and of shutdown. An
    error in its ``init`` (``NameTaken`` for a taken name, say) is raised at
    the caller, and the spec is dropped.

    Attributes:
        spec: how to start it.
    """

    spec: ChildSpec


class Supervisor(Process):
    """A process that keeps its children running.

    Give it the children when spawning it, or override :meth:`children`::

        sup = await node.spawn(
            metakit.Supervisor,
            [ChildSpec(Worker, name="w1"), ChildSpec(Worker, name="w2")],
            strategy="one_for_one", max_restarts=3, max_seconds=5,
        )

    The children are started in order in ``init`` (a child whose ``init``
    fails makes the spawn fail) and stopped in reverse order when the
    supervisor ends. ``call(sup, "which_children")`` returns ``[(index,
    pid_or_None), ...]``.

    Attributes:
        strategy: default strategy for subclasses.
        max_restarts: default restart intensity.
        max_seconds: default intensity period.
    """

    strategy: ClassVar[Strategy] = "one_for_one"
    max_restarts: ClassVar[int] = 3
    max_seconds: ClassVar[float] = 5.0
    trap_exit = True

    def children(self) -> Sequence[ChildSpec]:
        """The child specs, when none are passed to ``spawn``."""
        return []

    async def init(
        self,
        children: Sequence[ChildSpec] | None = None,
        *,
        strategy: Strategy | None = None,
        max_restarts: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        self._specs = list(children if children is not None else self.children())
        self._strategy: Strategy = strategy or type(self).strategy
        if self._strategy not in ("one_for_one", "one_for_all", "rest_for_one"):
            raise ValueError(f"unknown strategy {self._strategy!r}")
        self._max_restarts = type(self).max_restarts if max_restarts is None else max_restarts
        self._max_seconds = type(self).max_seconds if max_seconds is None else max_seconds
        self._pids: list[PID | None] = [None] * len(self._specs)
        self._restarts: deque[float] = deque()
        try:
            for index in range(len(self._specs)):
                await self._start(index)
        except BaseException:
            await self._stop_all()
            raise

    async def handle_message(self, sender: PID, message: Any) -> None:
        if isinstance(message, Exit) and message.source in self._pids:
            index = self._pids.index(message.source)
            self._pids[index] = None
            await self._child_exited(index, message.reason)

    async def handle_call(self, sender: Caller, request: Any) -> Any:
        """``"which_children"``: ``[(index, pid or None)]``; :class:`StartChild`: the new PID."""
        if isinstance(request, StartChild):
            self._specs.append(request.spec)
            self._pids.append(None)
            try:
                await self._start(len(self._specs) - 1)
            except BaseException:
                self._specs.pop()
                self._pids.pop()
                raise
            return self._pids[-1]
        if request == "which_children":
            return list(enumerate(self._pids))
        return super().handle_call(sender, request)

    async def terminate(self, reason: Any) -> None:
        await self._stop_all()

    def handle_inspect(self) -> dict[str, str]:
        return {
            "strategy": self._strategy,
            "children": str(sum(pid is not None for pid in self._pids)),
            "restarts": str(len(self._restarts)),
        }

    # -- internals -------------------------------------------------------------

    async def _start(self, index: int) -> None:
        spec = self._specs[index]
        self._pids[index] = await self.spawn(
            spec.cls,
            *spec.args,
            name=spec.name,
            link=True,
            mailbox_size=spec.mailbox_size,
            **spec.kwargs,
        )

    async def _stop(self, index: int) -> None:
        pid = self._pids[index]
        if pid is None:
            return
        # Forget it first: its Exit arrives later and must not look like a crash.
        self._pids[index] = None
        self.unlink(pid)
        try:
            self.send_exit(pid, "shutdown")
        except LookupError:
            return
        try:
            await self.node.wait_exit(pid, timeout=self._specs[index].shutdown)
        except TimeoutError:
            self.log.warning("child %r did not stop in time; killing it", pid)
            self.node.kill(pid)

    async def _stop_all(self) -> None:
        for index in reversed(range(len(self._pids))):
            await self._stop(index)

    def _wants_restart(self, index: int, reason: Any) -> bool:
        restart = self._specs[index].restart
        if restart == "permanent":
            return True
        if restart == "transient":
            return reason not in ("normal", "shutdown")
        return False

    def _count_restart(self) -> None:
        now = time.monotonic()
        window = self._restarts
        window.append(now)
        while window and window[0] < now - self._max_seconds:
            window.popleft()
        if len(window) > self._max_restarts:
            self.log.error("giving up: %d restarts within %g s", len(window), self._max_seconds)
            raise Stop(TooManyRestarts(self._max_restarts, self._max_seconds))

    async def _child_exited(self, index: int, reason: Any) -> None:
        if not self.node.running or not self._wants_restart(index, reason):
            return
        if self._strategy == "one_for_one":
            group = [index]
        elif self._strategy == "one_for_all":
            group = list(range(len(self._specs)))
        else:
            group = list(range(index, len(self._specs)))
        while self.node.running:
            self._count_restart()
            for other in reversed(group):
                await self._stop(other)
            try:
                for member in group:
                    if member == index or self._specs[member].restart != "temporary":
                        await self._start(member)
            except NodeNotRunning:
                return  # the node is stopping: nothing to restart into
            except Exception as exc:
                self.log.error("restarting child %d failed: %r", index, exc)
                continue
            return
