"""Whole-model deploy figures for benchmarks/RESULTS.md: every `vovnet bench --task detect|segment` run of the
issue's targets, one after the other, each interleaving its own subjects (so each ratio comes from one run).

    python benchmarks/dense_deploy.py [--iters 5] [--out results.json] [--only NAME ...]

Prints one markdown table row per run (and the command that reproduces it) and writes every result as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

RUNS = {
    "centermask_v39_deploy": "--task detect --arch centermask --model vovnet39 --deploy --vs torchvision",
    "centermask_v39_deploy_direct": "--task detect --arch centermask --model vovnet39 --deploy --no-winograd --vs torchvision",
    "centermask_lite_deploy": "--task detect --arch centermask --model vovnet19_slim_dw --deploy --vs torchvision",
    "centermask_v39_onnxruntime": "--task detect --arch centermask --model vovnet39 --runtime onnxruntime --vs torchvision",
    "centermask_lite_onnxruntime": "--task detect --arch centermask --model vovnet19_slim_dw --runtime onnxruntime --vs torchvision",
    "semantic_fpn_lite_deploy": "--task segment --arch fpn_semantic --model vovnet19_slim_dw --img-size 512 --deploy --vs torchvision",
    "semantic_fpn_lite_onnxruntime": "--task segment --arch fpn_semantic --model vovnet19_slim_dw --img-size 512 --runtime onnxruntime --vs torchvision",
}


def row(name: str, args: str, r: dict) -> str:
    stages = ", ".join(f"{k} {v:.0f}" for k, v in (r.get("stages") or {}).items())
    eager = f"{r['vs_eager']:.2f}x" if "vs_eager" in r else ""
    tv = f"{r['ratio']:.2f}x ({r['torchvision_img_s']:.3f} img/s)" if "ratio" in r else ""
    return (f"| {name} | {r['img_s']:.3f} | {r.get('eager_img_s', r['img_s']):.3f} | {eager} | {tv} | {stages} | "
            f"{r.get('detections') or ''} | {r['peak_rss_mb']:.0f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default="dense_deploy.json")
    p.add_argument("--only", nargs="*", choices=list(RUNS))
    args = p.parse_args()
    results = {}
    print("| run | img/s | our eager img/s | vs our eager | vs torchvision | stages (ms) | detections | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, run_args in RUNS.items():
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, "-m", "vovnet", "bench", *run_args.split(), "--warmup", str(args.warmup), "--iters", str(args.iters), "--json"]
        start = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode} |", flush=True)
            continue
        result = json.loads(done.stdout)
        result["command"] = "vovnet bench " + " ".join(cmd[4:])
        result["wall_s"] = time.time() - start
        results[name] = result
        print(row(name, run_args, result), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
