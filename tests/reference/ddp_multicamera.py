"""One rank of the two-process multi-camera training check (``torchrun --nproc_per_node 2``, gloo on the CPU).

The tiny body of :func:`multicamera_body` with memory-efficient training on, its stem and stage 2 frozen and
``norm_eval``, wrapped in DistributedDataParallel with ``find_unused_parameters=False``; each rank trains two
SGD steps on its own sample of a [2, 6, 3, H, W] batch. Rank 0 saves the second step's gradients and the weights
after it to ``argv[1]``.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vovnet.models.registry import build_model
from vovnet.models.specs import VoVNetConfig

TINY = VoVNetConfig(stem_chs=(8, 8, 16), stage_conv_chs=(8, 12, 16, 16), stage_out_chs=(16, 24, 32, 48),
                    layers_per_block=3, blocks_per_stage=(1, 2, 1, 1), norm_eval=True)
BATCH = 2  # samples of six cameras; one per rank


def multicamera_body() -> torch.nn.Module:
    torch.manual_seed(0)
    body = build_model("tiny", TINY, features_only=True)
    body.freeze_at(2)
    body.set_grad_checkpointing(True)
    return body.train()


def batch() -> torch.Tensor:
    return torch.randn(BATCH, 6, 3, 32, 48, generator=torch.Generator().manual_seed(1))


def loss_of(maps: list[torch.Tensor]) -> torch.Tensor:
    return sum(m.square().mean() for m in maps)


def train(model: torch.nn.Module, x: torch.Tensor, steps: int = 2) -> dict[str, torch.Tensor]:
    """``steps`` SGD steps on ``x``; the last step's gradients and the weights after it."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_of(model(x)).backward()
        grads = {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
    return {**grads, **{f"weight.{k}": v.detach().clone() for k, v in model.state_dict().items()}}


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DistributedDataParallel(multicamera_body(), find_unused_parameters=False)
    result = train(model, batch()[rank : rank + 1])
    if rank == 0:
        torch.save({k.replace("module.", "", 1): v for k, v in result.items()}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
