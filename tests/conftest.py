"""Every async test runs on both loops metakit supports: asyncio's and uvloop's.

uvloop is what users get by default (DESIGN.md §6), and its transports differ
from asyncio's in small ways, so the network metas are tested on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop
except ImportError:  # pragma: no cover - Windows, or a platform without uvloop
    pass
else:
    LOOPS["uvloop"] = uvloop.new_event_loop


def pytest_asyncio_loop_factories(
    config: Any, item: Any
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return LOOPS
