"""The observer: a live web page of a node, or of a cluster (DESIGN.md §11).

``await node.spawn(Observer)`` serves the page on 127.0.0.1;
``await node.call(observer, "url")`` gives its URL. The page shows the node
(uptime, loop, event-loop lag, memory, file descriptors, messages per
second), its processes (sortable, filterable, with per-second rates), the
supervision tree, the metas and connections with their traffic, and the
events; a process's name opens its ``process_info`` and ``handle_inspect``.
It is updated once a second while a page is open, and costs nothing while
none is.
"""

from __future__ import annotations

from .observer import Observer

__all__ = ["Observer"]
