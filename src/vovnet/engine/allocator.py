"""glibc's heap and memory-efficient training.

glibc serves big blocks from their own mappings and unmaps them when freed, but after the first such
block is freed it raises that threshold to the block's size (up to 32 MiB), so a training step's freed
activations stay in the heap, fragmented, and resident memory stays near the first step's peak whatever
the step keeps. Memory-efficient training (``--grad-checkpointing``) keeps less; fixing the threshold
lets resident memory show it, at the cost of fresh pages for every big block (about 20 % of a vovnet39
step at batch 16 on 2 CPU cores; see the README).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
BIG_BLOCK_BYTES = 128 * 1024


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def unmap_big_blocks(threshold: int = BIG_BLOCK_BYTES) -> bool:
    """Give every allocation of ``threshold`` bytes or more its own mapping, returned to the system when
    freed, and hand free heap memory back now; process-wide, best called before the model is built.
    The same as starting Python with ``MALLOC_MMAP_THRESHOLD_=threshold``. False where libc is not glibc."""
    libc = _glibc()
    if libc is None or not libc.mallopt(M_MMAP_THRESHOLD, threshold):
        return False
    libc.malloc_trim(0)
    return True
