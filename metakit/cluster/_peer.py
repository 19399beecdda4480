"""What the cluster keeps per other node, and how node names become subject tokens."""

from __future__ import annotations

from .._remote_actors import Peer

__all__ = ["VERSION", "NodePeer", "token"]

# The wire's version: first in every batch header and heartbeat.
VERSION = 1

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def token(name: str) -> str:
    """``name`` as one NATS subject token and KV key part: ``[A-Za-z0-9_-]``
    kept, every other byte of its UTF-8 as ``=XX`` (``"a@h.x"`` → ``"a=40h=2Ex"``)."""
    if all(c in _SAFE for c in name) and name:
        return name
    return "".join(c if c in _SAFE else "".join(f"={b:02X}" for b in c.encode()) for c in name)


class NodePeer(Peer):
    """A live other node: the core's :class:`~metakit._remote.Peer` plus its
    subject, liveness and outgoing frames.

    Attributes:
        subject: where its frames go.
        last_seen: loop time of its last heartbeat or batch.
        confirmed: False from our reconnect until it shows it is back.
        chunks: encoded frames waiting for the next batch.
        pending: their size in bytes.
        dirty: it waits in the outbound list of dirty peers.
    """

    __slots__ = ("chunks", "confirmed", "dirty", "last_seen", "pending", "subject")

    def __init__(self, name: str, creation: int, subject: str, now: float) -> None:
        super().__init__(name, creation)
        self.subject = subject
        self.last_seen = now
        self.confirmed = True
        self.dirty = False
        self.chunks: list[bytes] = []
        self.pending = 0

    def drop(self) -> None:
        """Forget what waits to be sent (it is down)."""
        self.chunks = []
        self.pending = 0
