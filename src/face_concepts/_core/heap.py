"""Keep the memory a fit frees in the process heap while the fit runs (glibc only).

Why: every solver iteration allocates and frees tens of n × C temporaries (logits, softmax,
curvature products: 13 MB each at n = 3311, C = 1000). glibc serves a block that large by
``mmap`` and unmaps it when freed, or, once its dynamic thresholds have risen, trims the top of
its heap whenever twice the largest freed block lies free there; either way the next
allocation faults every page in again, and the kernel zeroes each one. The default FACE fit of
``benchmarks/solver.py`` took 1.5–2 million minor page faults that way.

:func:`retained_heap` raises both thresholds for the duration of the block, so freed blocks
stay in the heap and are reused. On leaving the outermost block it sets them to the values
glibc's own dynamic rule reaches after the first large free (``AFTER``: glibc cannot be put
back on its dynamic rule once they are set) and hands the free memory back to the OS
(``malloc_trim``), so the process's footprint after a fit is what it holds, as before.
Elsewhere than glibc (macOS, Windows, musl, or ``ENABLED = False``) it does nothing. The
measurement is ``python benchmarks/iteration_profile.py --case heap``
(``benchmarks/results/solver.md``).
"""

from __future__ import annotations

import ctypes
import functools
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
RETAIN = 1 << 30  # both thresholds inside a fit: blocks up to 1 GiB come from the heap and stay
AFTER = (32 << 20, 64 << 20)  # (mmap, trim) afterwards: glibc's dynamic ceiling on 64-bit
ENABLED = True

_lock = threading.Lock()
_depth = 0
_libc: Any = None
_F = TypeVar("_F", bound=Callable[..., Any])


def _glibc() -> Any:
    """The C library when it is glibc with ``mallopt`` and ``malloc_trim``, else ``None``."""
    global _libc
    if _libc is None:
        _libc = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(None)
                if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
                    _libc = libc
            except OSError:
                pass
    return _libc or None


def _set(mmap_threshold: int, trim_threshold: int) -> None:
    libc = _glibc()
    libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
    libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold))


@contextmanager
def retained_heap() -> Iterator[None]:
    """Freed memory stays in the heap inside the block (nested blocks: the outermost decides)."""
    global _depth
    if not ENABLED or _glibc() is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _set(RETAIN, RETAIN)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(*AFTER)
                _glibc().malloc_trim(0)


def retains_heap(method: _F) -> _F:
    """Decorator: run ``method`` inside :func:`retained_heap`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with retained_heap():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = ["AFTER", "ENABLED", "RETAIN", "retained_heap", "retains_heap"]
