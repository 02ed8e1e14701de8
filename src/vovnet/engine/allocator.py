"""glibc's heap and memory-efficient training.

glibc serves big blocks from their own mappings and unmaps them when freed, but after the first such
block is freed it raises that threshold to the block's size (up to 32 MiB), so a training step's freed
activations stay in the heap, fragmented, and resident memory stays near the first step's peak whatever
the step keeps. Memory-efficient training (``--grad-checkpointing``) keeps less; fixing the threshold
lets resident memory show it, at the cost of fresh pages for every big block (about 20 % of a vovnet39
step at batch 16 on 2 CPU cores; see benchmarks/RESULTS.md). :func:`big_blocks_unmapped` does that for
the length of a ``with`` block: a training run enters it and leaves it at its end.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
BIG_BLOCK_BYTES = 128 * 1024
# The highest value glibc's own dynamic threshold reaches (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit); it keeps
# twice the threshold of free memory at the top of the heap.
DYNAMIC_MMAP_CEILING = 32 * 1024 * 1024

_inside = False  # a nested `with` leaves the setting to the outer one


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def big_blocks_unmapped(threshold: int = BIG_BLOCK_BYTES) -> Iterator[bool]:
    """Inside the block, every allocation of ``threshold`` bytes or more gets its own mapping, returned to
    the system when freed (as starting Python with ``MALLOC_MMAP_THRESHOLD_=threshold``), and free heap
    memory is handed back on entry. Process-wide; best entered before the model is built. Yields False
    (and changes nothing) where libc is not glibc.

    On exit glibc again serves blocks up to 32 MiB from its heap and keeps up to 64 MiB free there: the
    state its dynamic threshold reaches once a block that big has been freed (a training step frees
    several). glibc has no call that turns the dynamic threshold back on, so this fixed equivalent is the
    nearest undo there is.
    """
    global _inside
    if _inside:
        yield True
        return
    libc = _glibc()
    if libc is None or not libc.mallopt(M_MMAP_THRESHOLD, threshold):
        yield False
        return
    libc.malloc_trim(0)
    _inside = True
    try:
        yield True
    finally:
        _inside = False
        libc.mallopt(M_MMAP_THRESHOLD, DYNAMIC_MMAP_CEILING)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * DYNAMIC_MMAP_CEILING)
