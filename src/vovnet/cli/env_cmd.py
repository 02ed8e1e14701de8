"""``vovnet env``: the versions of vovnet, torch, torchvision, onnxruntime and the rest, and the CPU and GPUs, for bug reports."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="print the installed versions and the CPU / GPUs (paste it into a bug report)",
                       description=__doc__)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engine.runtime import environment
    from . import print_json

    env = environment()
    if args.json:
        print_json(env)
        return 0
    for name, version in env["packages"].items():
        print(f"{name}: {version or 'not installed'}")
    print(f"python: {env['python']} on {env['platform']}")
    print(f"torch CUDA build: {env['cuda_build'] or 'none (CPU only)'}; cuDNN: {env['cudnn'] or 'none'}")
    cpu = env["cpu"]
    print(f"CPU: {cpu['name']}, {cpu['cores']} cores, torch threads {cpu['torch_threads']}, vector ISA {cpu['capability']}")
    for index, gpu in enumerate(env["gpus"]):
        print(f"GPU {index}: {gpu['name']}, {gpu['memory_gib']} GiB, compute capability {gpu['capability']}")
    if not env["gpus"]:
        print("GPU: none that torch can use")
    return 0
