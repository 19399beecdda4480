"""glibc malloc tuning for socket-heavy work, once per OS process (DESIGN.md §6)."""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["warm_allocator"]

_allocator_warmed = False


def warm_allocator() -> None:
    """Tune glibc's malloc once per process for socket-heavy work.

    1. Free one 512 KiB block. On the stdlib loop each read allocates a
       256 KiB buffer (``recv``/``recvfrom`` with asyncio's ``max_size``) and
       shrinks it with realloc: a full-size block is never freed, so glibc
       never raises its dynamic mmap threshold, and every read costs an
       mmap/mremap/munmap (DESIGN.md §6: a fresh server runs ~4x slower until
       something frees one). One free raises it for the whole process.
    2. Raise the heap trim threshold to 64 MiB. Streaming keeps many 64 KiB
       frames in flight; at glibc's default the heap grows and is trimmed
       back over and over (a page fault storm: 213k faults per GiB echoed
       against 23k for a raw echo, half the throughput on uvloop). Freed heap
       up to 64 MiB stays in the process instead. Done after step 1: setting
       it freezes glibc's dynamic thresholds where step 1 left them.

    ``METAKIT_MALLOC_TUNING=0`` skips step 2. Elsewhere than glibc, step 2
    does nothing and step 1 is one short-lived allocation.
    """
    global _allocator_warmed
    if _allocator_warmed:
        return
    _allocator_warmed = True
    block = bytearray(512 * 1024)
    del block
    if os.environ.get("METAKIT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
