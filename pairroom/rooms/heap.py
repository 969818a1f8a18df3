"""Give freed heap memory back to the operating system after a large, short-lived allocation.

A large document's transient copies (compaction's second Doc, the whole-document encoding for a join
wave) are many small blocks on glibc's heap: freed, they stay in the process' RSS unless the heap is
trimmed. Only called after such work, never per message; a no-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("pairroom.heap")


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError as exc:
        log.info("heap trimming unavailable", extra={"error": repr(exc)})
        return None


_TRIM = _load_trim()


def release_freed_memory() -> None:
    """Return the freed pages at the top and inside glibc's heaps to the OS (``malloc_trim(0)``)."""
    if _TRIM is not None:
        _TRIM(0)
