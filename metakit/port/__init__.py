"""Ports: an external program as a meta-process (:class:`Port`) and its messages.

A port's Alias is the connection id in ``PortStart``, ``PortMessage``,
``PortStderr`` and ``PortExit``, exactly as a TCP connection's (see
:mod:`metakit.connection` for who closes what).
"""

from __future__ import annotations

from .messages import PortExit, PortMessage, PortStart, PortStderr
from .port import Port

__all__ = ["Port", "PortExit", "PortMessage", "PortStart", "PortStderr"]
