"""metakit: actor-style meta-processes for asyncio network endpoints.

The core lives here: :class:`Node`, :class:`Process`, :class:`Meta`,
:class:`Supervisor`, the ids, the system messages and the exceptions, and
the seam every network meta stands on (:class:`Connection`, :class:`StreamConnection`,
:class:`ConnectionSet`, :class:`Pool`, :func:`broadcast`). The network metas
are in the subpackages ``metakit.tcp``, ``metakit.udp``, ``metakit.web`` and
``metakit.websocket`` (this module never imports aiohttp).
"""

from __future__ import annotations

from ._extensions import compiled_modules  # first: it picks compiled or pure-Python modules
from ._run import loop_factory, run
from .connection import Connection, ConnectionStatistics, ConnState, StreamConnection
from .connections import ConnectionSet, broadcast
from .errors import (
    CallTimeout,
    FrameDecodeError,
    FrameTooLarge,
    FramingError,
    MailboxFull,
    MetakitError,
    NameTaken,
    NodeNotRunning,
    NoProcess,
    ProcessExited,
    RemoteError,
    Stop,
    TooManyRestarts,
    UnknownEvent,
)
from .ids import PID, Alias, Ref, Target
from .info import EventInfo, MetaInfo, ProcessCounters, ProcessInfo
from .messages import NO_REPLY, Caller, Down, EventMessage, Exit, NodeDown
from .meta import Meta
from .node import Node
from .pool import Pool
from .process import Process
from .supervisor import ChildSpec, StartChild, Supervisor

__version__ = "0.1.0"

__all__ = [
    "NO_REPLY",
    "PID",
    "Alias",
    "CallTimeout",
    "Caller",
    "ChildSpec",
    "ConnState",
    "Connection",
    "ConnectionSet",
    "ConnectionStatistics",
    "Down",
    "EventInfo",
    "EventMessage",
    "Exit",
    "FrameDecodeError",
    "FrameTooLarge",
    "FramingError",
    "MailboxFull",
    "Meta",
    "MetaInfo",
    "MetakitError",
    "NameTaken",
    "NoProcess",
    "Node",
    "NodeDown",
    "NodeNotRunning",
    "Pool",
    "Process",
    "ProcessCounters",
    "ProcessExited",
    "ProcessInfo",
    "Ref",
    "RemoteError",
    "StartChild",
    "Stop",
    "StreamConnection",
    "Supervisor",
    "Target",
    "TooManyRestarts",
    "UnknownEvent",
    "__version__",
    "broadcast",
    "compiled_modules",
    "loop_factory",
    "run",
]
