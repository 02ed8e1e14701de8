"""vovnet.engine.allocator: with big blocks unmapped on free, freed activations leave resident memory,
only inside the `with` block, and a training run leaves the setting behind it."""

import subprocess
import sys
from contextlib import contextmanager

import pytest

from vovnet.engine import TrainConfig, allocator, loop

# In one fresh interpreter (the setting is process-wide), for each mode in turn: free a 24 MiB block (glibc then
# serves blocks up to that size from its heap), then allocate, touch and free 8 MiB; print how much resident
# memory that freed. "default" measures before anything changed the setting, "unmap" inside
# big_blocks_unmapped(), "after" after entering and leaving it once more (the "unmap" block was left too).
PROBE = """
import contextlib, os, sys, torch
from vovnet.engine.allocator import big_blocks_unmapped
def rss_now_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
for mode in sys.argv[1:]:
    if mode == "after":
        with big_blocks_unmapped() as unmapped:
            assert unmapped
    with big_blocks_unmapped() if mode == "unmap" else contextlib.nullcontext(True) as unmapped:
        assert unmapped
        big = torch.ones(6 * 2**20); del big
        block = torch.ones(2 * 2**20)
        before = rss_now_mb(); del block
        print(mode, before - rss_now_mb())
"""


def freed_mb(*modes: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, *modes], check=True, capture_output=True, text=True).stdout
    return {mode: float(mb) for mode, mb in (line.split() for line in out.strip().splitlines()[-len(modes):])}


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_leave_resident_memory_only_while_unmapped():
    freed = freed_mb("default", "unmap", "after")
    assert freed["default"] < 1, freed  # glibc's heap keeps the 8 MiB
    assert freed["unmap"] > 7, freed  # handed back at once
    assert freed["after"] < 1, freed  # kept again once the `with` block is left


@pytest.mark.slow
def test_a_memory_efficient_run_unmaps_for_its_length_only(tmp_path, monkeypatch):
    calls = []
    real = allocator.big_blocks_unmapped

    def watched(*args, **kwargs):
        calls.append("enter")
        try:
            with real(*args, **kwargs) as unmapped:
                yield unmapped
        finally:
            calls.append("exit")

    monkeypatch.setattr(loop, "big_blocks_unmapped", contextmanager(watched))
    config = TrainConfig(epochs=1, limit_train=16, limit_val=8, batch_size=8, quiet=True, out=str(tmp_path / "r"),
                         grad_checkpointing=True, device="cpu")
    loop.train(config)
    assert calls == ["enter", "exit"] and not allocator._inside
    loop.train(config.replace(grad_checkpointing=False, out=str(tmp_path / "plain")))
    assert calls == ["enter", "exit"]  # plain training leaves the allocator alone
