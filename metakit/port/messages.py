"""The messages a port (an external program as a meta) exchanges with its worker::

PortStart(port, os_pid)        once, first
PortMessage(port, data)        per stdout frame, in order; written to stdin the other way
PortStderr(port, data)         per stderr line (``stderr="lines"``)
PortExit(port, returncode)     exactly once, last
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ids import Alias
from ..messages import fast_init

__all__ = ["PortExit", "PortMessage", "PortStart", "PortStderr"]


@fast_init
@dataclass(frozen=True, slots=True)
class PortStart:
    """The program is running.

    Attributes:
        port: the port's Alias; send it ``PortMessage`` to write to the program's stdin.
        os_pid: the program's process id (also its process group's).
    """

    port: Alias
    os_pid: int


@fast_init
@dataclass(frozen=True, slots=True)
class PortMessage:
    """Data to or from the program.

    Attributes:
        port: the port's Alias.
        data: one stdout frame (a line without its newline, with ``Line()``
            framing; ``bytes`` chunks with ``Raw()``); to write, a frame for stdin.
    """

    port: Alias
    data: Any


@fast_init
@dataclass(frozen=True, slots=True)
class PortStderr:
    """One line the program wrote on stderr (without its newline).

    Attributes:
        port: the port's Alias.
        data: the line, ``bytes``.
    """

    port: Alias
    data: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class PortExit:
    """The program has ended, and nothing more comes from it.

    Attributes:
        port: the port's Alias.
        returncode: its exit status, or ``-N`` for signal N (as ``subprocess``).
        reason: why the port ended: ``"exited"`` (the program ended on its
            own), ``"normal"`` (``send_exit(port, "normal")``), ``"kill"``,
            ``"shutdown"``, or an exception (a framing error).
    """

    port: Alias
    returncode: int | None
    reason: Any
