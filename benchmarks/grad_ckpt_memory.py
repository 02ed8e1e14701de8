"""One training step's memory (resident, above the loaded libraries) of vovnet39 with memory-efficient
training against timm's ese_vovnet39b, plain, at batch 16 and 224 px, channels_last, SGD with momentum.

Each subject runs in its own process (``vovnet.bench.worker.step_memory_mb``: freed memory is
trimmed back to the system and the kernel's peak mark reset before the measured step), both with big
blocks unmapped on free from the start (``MALLOC_MMAP_THRESHOLD_=131072``, what ``vovnet train
--grad-checkpointing`` sets); ``--glibc-default`` shows glibc's default heap, which keeps freed blocks:

    .venv/bin/python benchmarks/grad_ckpt_memory.py
    .venv/bin/python benchmarks/grad_ckpt_memory.py --glibc-default
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SUBJECTS = ("timm", "ours")


def measure(subject: str, batch: int, threads: int) -> float:
    import timm
    import torch

    import vovnet
    from vovnet.bench.worker import rss_now_mb, step_memory_mb

    torch.set_num_threads(threads)
    base = rss_now_mb()
    if subject == "ours":
        model = vovnet.create_model("vovnet39", num_classes=1000)
        model.set_grad_checkpointing(True)
    else:
        model = timm.create_model("ese_vovnet39b", num_classes=1000)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # optimizer state and packed weights exist before the measured step
    return step_memory_mb(step, torch.device("cpu"), base)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--glibc-default", action="store_true", help="leave glibc's heap as it is (it keeps freed blocks)")
    parser.add_argument("--subject", choices=SUBJECTS, help=argparse.SUPPRESS)  # one measurement, in a child process
    args = parser.parse_args()
    if args.subject:
        print(json.dumps(measure(args.subject, args.batch, args.threads)))
        return
    from vovnet.engine.allocator import BIG_BLOCK_BYTES

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = str(BIG_BLOCK_BYTES)
    memory = {}
    for subject in SUBJECTS:
        out = subprocess.run([sys.executable, __file__, "--subject", subject, "--batch", str(args.batch), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True, env=env).stdout
        memory[subject] = float(out.strip().splitlines()[-1])
    print(json.dumps({"allocator": "glibc default" if args.glibc_default else f"MALLOC_MMAP_THRESHOLD_={BIG_BLOCK_BYTES}",
                      "timm_plain_mb": round(memory["timm"]), "ours_grad_ckpt_mb": round(memory["ours"]),
                      "ratio": round(memory["ours"] / memory["timm"], 3)}))


if __name__ == "__main__":
    main()
