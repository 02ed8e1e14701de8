"""The figures behind the README's speed table: `vovnet bench --vs timm` for each case below.

Each case is one ``vovnet bench`` run (ours, timm's equivalents and the matmul peak interleaved in
that run); results go to ``OUT/deploy_vs_timm.json`` and ``OUT/deploy_vs_timm.md`` after every case,
so a long series can be stopped and its finished rows kept.

    python benchmarks/deploy_vs_timm.py                      # vovnet39, 224, the issue's batch sizes
    python benchmarks/deploy_vs_timm.py --only fp32-deploy train-fp32 --iters 20
    python benchmarks/deploy_vs_timm.py --quick              # tiny settings: proves the pipeline in a minute or two
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from vovnet.bench.bench import BenchRequest, benchmark, machine_info
from vovnet.io import atomic_write_text

# name -> (BenchRequest fields, the target for it)
CASES: dict[str, tuple[dict, str]] = {
    "fp32-eager": (dict(batch=8), "reference: same network, no deploy"),
    "fp32-deploy": (dict(batch=8, deploy=True), ">= 1.45x timm, >= 90 % of fp32 matmul peak"),
    "fp32-deploy-compiled": (dict(batch=8, deploy=True, compile=True), "(torch.compile; minutes to compile)"),
    "bf16-deploy": (dict(batch=8, deploy=True, precision="bf16"), ">= 4x timm fp32"),
    "fp32-onnxruntime": (dict(batch=8, runtime="onnxruntime"), "(no target)"),
    "train-fp32": (dict(batch=8, mode="train", deploy=True), ">= 1.1x timm"),
    "train-bf16": (dict(batch=8, mode="train", deploy=True, precision="bf16"), ">= 2.5x timm fp32"),
    "train-memory-efficient": (dict(batch=16, mode="train", deploy=True, grad_checkpointing=True),
                               "memory <= 0.5x timm at <= 1.3x its step; < timm grad-ckpt memory at <= its step"),
}
QUICK = dict(model="vovnet19_slim_dw", img_size=64, batch=2, iters=1, warmup=1, matmul_size=512)


def _pct(x: float | None) -> str:
    return f"{x:.0%}" if x is not None else "-"


def _x(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"


def row(name: str, result: dict, target: str) -> dict:
    """One line of the table: ours against timm fp32 eager, plus ours against timm's other variants."""
    others = {r["label"]: r for r in result["rows"][2:-1]}
    return dict(
        case=name, model=result["model"], mode=result["mode"], batch=result["batch"], precision=result["effective_precision"],
        ours_img_s=result["img_s"], timm_img_s=result["timm_img_s"], ratio=result["ratio"],
        peak_fraction=result["peak_fraction"], matmul_peak_gflop_s=result["matmul_peak_gflop_s"],
        memory_mb=result["memory_mb"], timm_memory_mb=result["timm_memory_mb"], memory_ratio=result["memory_ratio"],
        vs_other_timm={label: dict(ratio=result["img_s"] / r["img_s"],
                                   memory_ratio=result["memory_mb"] / r["memory_mb"] if r["memory_mb"] and result["memory_mb"] else None)
                       for label, r in others.items()},
        notes=result["notes"], target=target,
    )


def markdown(rows: list[dict], machine: dict, command: str) -> str:
    lines = [
        f"Measured on {machine['cpu']} ({machine['cpu_count']} cores, {machine['cpu_capability']}, native bf16: "
        f"{machine['native_bf16']}), torch {machine['torch']}, with `{command}`. Ratios are to timm's fp32 eager model "
        "measured interleaved in the same run; memory is one step's peak above the loaded libraries.",
        "",
        "| case | model | precision | batch | ours img/s | timm img/s | ratio | fraction of peak | memory vs timm | vs timm's own variant | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        other = "; ".join(f"{_x(v['ratio'])} speed, {_x(v['memory_ratio'])} memory vs {k}" for k, v in r["vs_other_timm"].items())
        lines.append(f"| {r['case']} | {r['model']} | {r['precision']} | {r['batch']} | {r['ours_img_s']:.2f} | {r['timm_img_s']:.2f} | "
                     f"{_x(r['ratio'])} | {_pct(r['peak_fraction'])} | {_x(r['memory_ratio'])} | {other or '-'} | {r['target']} |")
    notes = sorted({n for r in rows for n in r["notes"]})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vovnet39")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=list(CASES), help="run these cases only")
    parser.add_argument("--quick", action="store_true", help=f"tiny settings ({QUICK})")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    common = dict(model=args.model, img_size=args.img_size, iters=args.iters, warmup=args.warmup)
    if args.quick:
        common.update(QUICK)
    command = "python benchmarks/deploy_vs_timm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for name in args.only or CASES:
        fields, target = CASES[name]
        settings = {**fields, **common}
        if args.quick:
            settings["batch"] = QUICK["batch"]
        req = BenchRequest(vs_timm=True, **settings)
        print(f"== {name}: {dataclasses.asdict(req)}", file=sys.stderr, flush=True)
        rows.append(row(name, benchmark(req, log=lambda m: print(f"   {m}", file=sys.stderr, flush=True)), target))
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "deploy_vs_timm.json", json.dumps(dict(command=command, machine=machine_info(), rows=rows), indent=2))
        atomic_write_text(args.out / "deploy_vs_timm.md", markdown(rows, machine_info(), command.strip()))
    print((args.out / "deploy_vs_timm.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
