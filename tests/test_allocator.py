"""vovnet.engine.allocator: with big blocks unmapped on free, freed activations leave resident memory."""

import subprocess
import sys

import pytest

# In a fresh interpreter (the setting is process-wide): free a 24 MiB block (glibc then serves blocks up to
# that size from its heap), then allocate, touch and free 8 MiB; print how much resident memory that freed.
PROBE = """
import sys, torch
from vovnet.deployment.worker import rss_now_mb
from vovnet.engine.allocator import unmap_big_blocks
if sys.argv[1] == "unmap":
    assert unmap_big_blocks()
big = torch.ones(6 * 2**20); del big
block = torch.ones(2 * 2**20)
before = rss_now_mb(); del block
print(before - rss_now_mb())
"""


def freed_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_leave_resident_memory_only_when_unmapped():
    assert freed_mb("default") < 1  # glibc's heap keeps the 8 MiB
    assert freed_mb("unmap") > 7  # handed back at once
