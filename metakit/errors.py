"""The exceptions metakit raises, all rooted at :class:`MetakitError`.

The tree::

    MetakitError
    ├── NoProcess              (also LookupError)  no process or meta by that id or name
    ├── NameTaken              (also ValueError)   a name is already registered
    ├── UnknownEvent           (also LookupError)  no such event (or not yours to publish)
    ├── MailboxFull                                a bounded mailbox refused a message
    ├── CallTimeout            (also TimeoutError) no reply within the call's timeout
    ├── ProcessExited                              the callee ended before it replied
    ├── NodeNotRunning         (also RuntimeError) the node is stopped or stopping
    ├── RemoteError                                a remote exception of a type not rebuilt here
    ├── TooManyRestarts                            a supervisor gave up (its exit reason)
    └── FramingError           (also ValueError)   bytes that do not form a valid frame
        ├── FrameTooLarge                          a frame is longer than max_length
        └── FrameDecodeError                       a frame's payload does not decode

:class:`Stop` is not an error: a handler raises it to end its own process
deliberately.

Leaves also subclass the built-in exception they mean, so ``except
TimeoutError`` catches a :class:`CallTimeout`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CallTimeout",
    "FrameDecodeError",
    "FrameTooLarge",
    "FramingError",
    "MailboxFull",
    "MetakitError",
    "NameTaken",
    "NoProcess",
    "NodeNotRunning",
    "ProcessExited",
    "RemoteError",
    "Stop",
    "TooManyRestarts",
    "UnknownEvent",
]


class MetakitError(Exception):
    """Root of every exception metakit raises."""


class NoProcess(MetakitError, LookupError):
    """No live process or meta-process answers to the target.

    Attributes:
        target: the PID, Alias or name that was looked up.
    """

    def __init__(self, target: object) -> None:
        super().__init__(target)
        self.target = target

    def __str__(self) -> str:
        return f"no process {self.target!r}"


class NameTaken(MetakitError, ValueError):
    """The name is already registered on this node, or the process already has one.

    Attributes:
        name: the name that could not be registered.
        owner: the PID that holds it (``None`` if the process already has another name).
    """

    def __init__(self, name: str, owner: object = None, reason: str | None = None) -> None:
        super().__init__(name, owner)
        self.name = name
        self.owner = owner
        self.reason = reason

    def __str__(self) -> str:
        if self.reason:
            return f"cannot register {self.name!r}: {self.reason}"
        return f"name {self.name!r} is already registered by {self.owner!r}"


class UnknownEvent(MetakitError, LookupError):
    """No event by that name is registered (by this producer, when publishing).

    Attributes:
        name: the event name.
        producer: the PID that tried to publish or withdraw it, if any.
    """

    def __init__(self, name: str, producer: object = None) -> None:
        super().__init__(name, producer)
        self.name = name
        self.producer = producer

    def __str__(self) -> str:
        if self.producer is not None:
            return f"event {self.name!r} is not registered by {self.producer!r}"
        return f"no event {self.name!r} is registered"


class MailboxFull(MetakitError):
    """The target's bounded mailbox is full; the message was not delivered.

    On a cluster node, also raised for a remote target when ``max_pending``
    bytes already wait for its node (``unit`` is then ``"bytes"``).

    Attributes:
        target: the PID or Alias whose mailbox is full.
        size: the mailbox bound.
        unit: what ``size`` counts: ``"messages"``, or ``"bytes"`` queued for a node.
    """

    def __init__(self, target: object, size: int, unit: str = "messages") -> None:
        super().__init__(target, size, unit)
        self.target = target
        self.size = size
        self.unit = unit

    def __str__(self) -> str:
        if self.unit == "bytes":
            return (
                f"{self.size} bytes already wait for the node of {self.target!r}; message not sent"
            )
        return f"mailbox of {self.target!r} is full ({self.size} messages); message not delivered"


class CallTimeout(MetakitError, TimeoutError):
    """A call got no reply within its timeout. A late reply is discarded.

    Attributes:
        target: the PID, Alias or name that was called.
        timeout: the timeout in seconds.
    """

    def __init__(self, target: object, timeout: float) -> None:
        super().__init__(target, timeout)
        self.target = target
        self.timeout = timeout

    def __str__(self) -> str:
        return f"call to {self.target!r} got no reply within {self.timeout:g} s"


class ProcessExited(MetakitError):
    """The called process ended before it replied.

    Attributes:
        target: the PID or Alias that was called.
        reason: its exit reason (``"normal"``, ``"shutdown"``, ``"kill"`` or an exception).
    """

    def __init__(self, target: object, reason: Any) -> None:
        super().__init__(target, reason)
        self.target = target
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.target!r} exited before replying (reason: {self.reason!r})"


class NodeNotRunning(MetakitError, RuntimeError):
    """The node is not started, or is stopping, so it cannot spawn or route."""


class RemoteError(MetakitError):
    """An exception raised on another node whose type this node does not rebuild.

    Builtin exceptions, metakit's own and types registered with
    ``@metakit.cluster.message`` cross a node boundary with their type; any
    other arrives as this.

    Attributes:
        type_name: the qualified name of the original type, e.g. ``"app.errors.Busy"``.
        message: ``str()`` of the original exception.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class TooManyRestarts(MetakitError):
    """A supervisor saw more than ``max_restarts`` restarts within ``max_seconds``.

    It is the supervisor's exit reason when it gives up.
    """

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        super().__init__(max_restarts, max_seconds)
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds

    def __str__(self) -> str:
        return (
            f"more than {self.max_restarts} restarts within {self.max_seconds:g} s; "
            "supervisor gave up"
        )


class FramingError(MetakitError, ValueError):
    """The peer sent bytes that do not form a valid frame (its fault, not yours).

    Attributes:
        frames: the frames the failing ``feed`` completed before the bad one,
            in order, so a reader can deliver them before giving up: nothing
            that arrived whole is lost. Empty when the error is raised again.
    """

    frames: list[Any] = []  # noqa: RUF012 - replaced per instance by the framer


class FrameTooLarge(FramingError):
    """A frame is longer than the framer's ``max_length``.

    Attributes:
        length: how long the frame is, or at least how many bytes were seen without an end.
        max_length: the limit.
    """

    def __init__(self, length: int, max_length: int) -> None:
        super().__init__(length, max_length)
        self.length = length
        self.max_length = max_length

    def __str__(self) -> str:
        return f"frame of {self.length} bytes or more exceeds max_length={self.max_length}"


class FrameDecodeError(FramingError):
    """A complete frame's payload could not be decoded (for example invalid JSON)."""


class Stop(Exception):
    """Raise inside a handler to end the process deliberately.

    ``raise Stop()`` ends it with reason ``"normal"``; ``raise Stop("shutdown")``
    or ``raise Stop(SomeError(...))`` with that reason. It is not logged as a crash.
    """

    def __init__(self, reason: Any = "normal") -> None:
        super().__init__(reason)
        self.reason = reason
