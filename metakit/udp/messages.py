"""The messages a UDP server meta exchanges with its workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ids import Alias
from ..messages import fast_init

__all__ = ["UDPError", "UDPPacket"]


@fast_init
@dataclass(frozen=True, slots=True)
class UDPPacket:
    """A datagram, in either direction.

    A worker receives one per datagram and replies by sending
    ``UDPPacket(server, addr, data)`` to ``server``.

    Attributes:
        server: the UDP server meta's Alias.
        addr: the peer's address, as the socket reports it (``(host, port)``,
            or ``(host, port, flowinfo, scope_id)`` for IPv6).
        data: the payload.
    """

    server: Alias
    addr: Any
    data: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class UDPError:
    """Sending to ``addr`` failed, e.g. an ICMP "port unreachable" came back.

    Delivered to the worker that last wrote to ``addr`` (or the next worker
    when none did); the server keeps running.

    Attributes:
        server: the UDP server meta's Alias.
        addr: the address the failed datagram was sent to (None if the
            platform does not say).
        error: the ``OSError`` (``ConnectionRefusedError`` for port unreachable),
            or the ``TypeError``/``ValueError`` of a malformed reply.
    """

    server: Alias
    addr: Any
    error: Exception
