"""End-to-end wall time and test accuracy of `vovnet train` with its defaults (what `make demo` runs).

    .venv/bin/python benchmarks/demo_digits.py --repeat 3
    .venv/bin/python benchmarks/demo_digits.py --threads 1 -- --epochs 2     # extra train flags after --

Wall time covers the whole command (interpreter start, imports, data, training, evaluation, every file
written), as a user sees it. Target on 2 CPU cores: test top-1 >= 0.99 in under 45 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(out: Path, extra: list[str], threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vovnet", "train", "--quiet", "--out", str(out), *extra], env=env, check=True)
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": round(wall, 2), "train_s": summary["train_seconds"], "test_acc": summary["test_acc"],
            "best_acc": summary["best_acc"], "epochs": summary["epochs"], "model": summary["model"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs to time (default 1)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs (default: torch's choice)")
    parser.add_argument("extra", nargs="*", help="extra `vovnet train` flags (after --)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            rows.append(run_once(Path(tmp) / f"run{i}", args.extra, args.threads))
            r = rows[-1]
            print(f"run {i + 1}: test top-1 {r['test_acc']:.2%}  wall {r['wall_s']:.1f} s  (training {r['train_s']:.1f} s)", flush=True)
    walls = sorted(r["wall_s"] for r in rows)
    print(json.dumps({"cpu_count": os.cpu_count(), "threads": args.threads, "extra": args.extra, "runs": rows,
                      "median_wall_s": walls[len(walls) // 2]}))


if __name__ == "__main__":
    main()
