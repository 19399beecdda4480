"""An awaitable that is already done: what a call that may wait returns when it did not."""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any

__all__ = ["DONE"]


class _Done:
    """Awaiting it returns None at once (``register_name`` and ``join_group`` off a cluster)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]  # done at once: nothing to yield


DONE: Awaitable[None] = _Done()
