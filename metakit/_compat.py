"""Small shims between metakit and the libraries it adapts."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

__all__ = ["mark_coroutine_function"]


def mark_coroutine_function(obj: Any) -> None:
    """Make ``asyncio.iscoroutinefunction(obj)`` true for a callable object.

    aiohttp warns about route handlers that check fails, and an object with
    an ``async def __call__`` fails it; these are the marks it looks for
    (Python 3.11's asyncio, and 3.12's inspect).
    """
    obj._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)
    obj._is_coroutine_marker = getattr(inspect, "_is_coroutine_mark", None)
