"""The one training loop, for every task: read it top to bottom.

``train(config)`` runs a fresh run, ``resume(out_dir)`` continues one. Under ``torchrun`` both run
DistributedDataParallel; only rank 0 prints and writes files. Per epoch the loop writes, in this
order and each atomically: ``last.safetensors``, ``best.safetensors`` (when the primary metric
improved), ``resume.pt``, ``metrics.csv`` and ``summary.json``; at the end ``curves.png`` and the
task's plots (drawing costs more than a small epoch). A run killed at any moment therefore resumes
from its last completed epoch, and with ``--deterministic`` on the CPU ends with the same weights,
bit for bit, as a run never interrupted.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import TrainingError, UsageError
from . import report
from .allocator import big_blocks_unmapped
from .config import TrainConfig, config_changes
from .optim import build_ema, build_optimizer, build_scheduler
from .runtime import Runtime
from .sampling import LossWeightedSampler
from .state import RESUME_FILE, load_state, restore_rng, rng_state, save_state
from .task import EvalResult, Task, TaskData, get_task

MAX_AUTO_WORKERS = 8
LOG_INTERVAL = 20  # training steps between the host's looks at the loss (finiteness, progress bar)


def train(config: TrainConfig) -> dict[str, Any]:
    """Train ``config`` from scratch (or from ``config.pretrained``); returns the summary dict."""
    return _run(config, state=None)


def resume(out_dir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Continue the run in ``out_dir`` from its last completed epoch.

    ``overrides`` may change only settings that do not alter the result (``workers``, ``quiet``,
    ``device``, ``data_root``, ``download``); any other difference from the stored configuration is
    refused with the difference named.
    """
    out_dir = Path(out_dir)
    state = load_state(out_dir / RESUME_FILE)
    stored = TrainConfig.from_dict(state["config"])
    changes = config_changes(stored, overrides)
    if changes:
        raise TrainingError(f"cannot resume {out_dir} with a different configuration: {'; '.join(changes)}")
    free = {k: v for k, v in overrides.items() if k not in ("out",)}
    return _run(stored.replace(**free, out=str(out_dir)), state=state)


def _set_determinism(config: TrainConfig, runtime: Runtime) -> None:
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif runtime.device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _out_dir(config: TrainConfig, runtime: Runtime, resuming: bool) -> Path:
    """The output folder, created and proven writable by rank 0 before anything is trained."""
    error = None
    out = Path(config.out) if config.out else report.default_out_dir(config.model)
    if runtime.is_main:
        try:
            if not resuming and (out / RESUME_FILE).exists():
                raise TrainingError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
            report.prepare_out_dir(out)
        except TrainingError as e:
            error = str(e)
    out, error = runtime.broadcast((out, error))
    if error:
        raise TrainingError(error)
    return out


def _loaders(config: TrainConfig, data, runtime: Runtime, generator: torch.Generator) -> tuple[DataLoader, LossWeightedSampler, DataLoader]:
    """Training loader (shuffled per epoch, or loss-weighted with ``--hard-sampling``, sharded over ranks)
    and evaluation loader (each rank a disjoint, unpadded shard, so metrics summed over ranks count every
    sample once)."""
    workers = loader_workers(config.workers, data.in_memory)
    common = dict(batch_size=config.batch_size, num_workers=workers, collate_fn=data.collate_fn,
                  pin_memory=runtime.device.type == "cuda", persistent_workers=workers > 0)
    sampler = LossWeightedSampler(data.train, hard_fraction=config.hard_sampling, batch_size=config.batch_size,
                                  num_replicas=runtime.world_size, rank=runtime.rank, seed=config.seed)
    drop_last = len(sampler) >= config.batch_size  # BatchNorm cannot train on a final batch of one
    train_loader = DataLoader(data.train, sampler=sampler, drop_last=drop_last, generator=generator, **common)
    val_shard = list(range(runtime.rank, len(data.val), runtime.world_size))
    val_loader = DataLoader(data.val, sampler=val_shard, generator=torch.Generator().manual_seed(config.seed), **common)
    return train_loader, sampler, val_loader


def _build_data_main_first(task: Task, runtime: Runtime):
    """Rank 0 prepares the data first (a download, a cache), the other ranks then read what it left."""
    data = task.build_data(train=True) if runtime.is_main else None
    runtime.barrier()
    return data if data is not None else task.build_data(train=True)


def loader_workers(requested: int | None, in_memory: bool) -> int:
    """``requested``, or by default 0 for in-memory data (workers would only add overhead) and up to 8 otherwise."""
    if requested is not None:
        return requested
    return 0 if in_memory else min(MAX_AUTO_WORKERS, os.cpu_count() or 1)


def _stop_at_non_finite(losses: list[float], runtime: Runtime, epoch: int, first_step: int, out: Path) -> None:
    """Raise TrainingError if any process had a non-finite loss among ``losses``, this interval's losses
    of steps ``first_step``, ``first_step + 1``, ... (1-based) of ``epoch`` (0-based), naming the first."""
    # Every rank takes part and so stops at the same step; a rank going on alone would wait forever in DDP's all-reduce.
    flags = runtime.sum_over_ranks([0.0 if math.isfinite(v) else 1.0 for v in losses])
    bad = next((i for i, flag in enumerate(flags) if flag), None)
    if bad is None:
        return
    where = f"last good checkpoint: {out / 'last.safetensors'} (epoch {epoch})" if epoch else "no checkpoint was written"
    value = losses[bad] if not math.isfinite(losses[bad]) else "on another process"
    raise TrainingError(f"non-finite loss ({value}) at epoch {epoch + 1}, step {first_step + bad}; stopped, {where}")


def _epoch_line(row: dict[str, Any], task: Task, epochs: int) -> str:
    metrics = "  ".join(f"{k} {row[k]:.4f}" for k in task.metric_columns)
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
            f"{metrics}  lr {row['lr']:.2e}  {row['seconds']:.1f} s  {row['images_per_s']:.0f} img/s")


def _run(config: TrainConfig, state: dict[str, Any] | None) -> dict[str, Any]:
    runtime = Runtime.create(config.device, config.amp, config.channels_last)
    was_deterministic, was_benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    # Memory-efficient training on the CPU: freed big blocks go back to the system at once, for this run only.
    unmap = config.grad_checkpointing and runtime.device.type == "cpu"
    try:
        with big_blocks_unmapped() if unmap else contextlib.nullcontext(False) as unmapped:
            if unmapped and runtime.is_main:
                print("memory-efficient training: freed big blocks go back to the system at once (glibc MALLOC_MMAP_THRESHOLD_)")
            return _train(config, runtime, state)
    finally:  # leave the process as we found it for a Python caller
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = was_benchmark
        runtime.close()


class TrainState(NamedTuple):
    """What training changes and ``resume.pt`` keeps: saved by :func:`_resume_state`, restored by :func:`_restore`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: nn.Module | None
    sampler: LossWeightedSampler
    generator: torch.Generator  # the training loader's

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluated and saved: the moving average's with ``--ema-decay``, else the model's."""
        return self.ema.module if self.ema is not None else self.model


def _train(config: TrainConfig, runtime: Runtime, state: dict[str, Any] | None) -> dict[str, Any]:
    task = get_task(config.task)(config)
    if config.hard_sampling and not task.records_sample_losses:
        raise UsageError(f"--hard-sampling needs per-sample training losses, which --task {task.name} does not give")
    out = _out_dir(config, runtime, resuming=state is not None)
    say = print if runtime.is_main else (lambda *a, **k: None)
    _set_determinism(config, runtime)
    torch.manual_seed(config.seed)

    # ---- data and model -------------------------------------------------------------------------
    data = _build_data_main_first(task, runtime)
    if data.skipped:
        say(f"skipped {len(data.skipped)} unreadable image(s), e.g. {data.skipped[0]}")
    model: nn.Module = task.build_model(data.class_names)
    if config.sync_bn and runtime.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(config.seed + runtime.rank)  # ranks share the initial weights, not their augmentations
    generator = torch.Generator().manual_seed(config.seed + runtime.rank)
    train_loader, sampler, val_loader = _loaders(config, data, runtime, generator)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise UsageError(f"no training batches: {len(data.train)} training samples for {runtime.world_size} process(es)")

    optimizer = build_optimizer(model, config.opt, config.lr, config.weight_decay, config.momentum)
    scheduler = build_scheduler(optimizer, config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch), config.min_lr_ratio,
                                config.lr_schedule, config.decay_fraction, config.lr_steps, config.lr_gamma)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=config.amp == "fp16")
    ema = build_ema(model, config.ema_decay) if config.ema_decay > 0 else None
    train_state = TrainState(model, optimizer, scheduler, scaler, ema, sampler, generator)
    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "value": -math.inf}
    start_epoch = 0
    if state is not None:
        history, best, start_epoch = _restore(state, train_state, runtime.rank)
        say(f"resuming {out} after epoch {start_epoch}/{config.epochs}")
    ddp_model = model
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        ddp_model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=task.find_unused_parameters)
    if runtime.is_main:
        report.write_config(out, config.to_dict())
    say(f"{task.name}: {config.model} on {data.info.get('source', config.data)} ({len(data.train)} train / {len(data.val)} test, "
        f"{len(data.class_names)} classes), {config.epochs} epochs, {runtime.world_size} process(es) on {runtime.device}; outputs in {out}")
    train_seconds = sum(r["seconds"] for r in history)
    result: EvalResult | None = None

    # ---- the loop -------------------------------------------------------------------------------
    for epoch in range(start_epoch, config.epochs):
        train_loss, images, seconds = _train_one_epoch(epoch, task, ddp_model, train_state, train_loader, config, runtime, out)
        train_seconds += seconds
        result, history, best = _end_epoch(epoch, task, train_state, val_loader, config, runtime, out, data, history, best,
                                           train_loss, images, seconds, train_seconds)

    # ---- the end --------------------------------------------------------------------------------
    if result is None:  # resumed a run that had already finished
        result = task.evaluate(train_state.eval_model, val_loader, runtime)
    summary = _summary(config, task, data, history, best, result, train_seconds, out, done=True)
    if runtime.is_main:
        report.plot_curves(out, history, task.metric_columns)
        task.write_plots(out, result)
        report.write_summary(out, summary)
    return summary


def _restore(state: dict[str, Any], train_state: TrainState, rank: int) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Load a ``resume.pt`` ``state`` into ``train_state`` (and this rank's random streams); returns the run's
    ``(history, best, epochs done)``."""
    train_state.model.load_state_dict(state["model"])
    train_state.optimizer.load_state_dict(state["optimizer"])
    train_state.scheduler.load_state_dict(state["scheduler"])
    train_state.scaler.load_state_dict(state["scaler"])
    if train_state.ema is not None:
        train_state.ema.load_state_dict(state["ema"])
    if "sampler" in state:
        train_state.sampler.load_state_dict(state["sampler"])
    rngs = state["rng"]
    restore_rng(rngs[rank] if rank < len(rngs) else rngs[0], train_state.generator)
    # Runs written before the validation loss was named so call it test_loss.
    history = [{("val_loss" if k == "test_loss" else k): v for k, v in row.items()} for row in state["history"]]
    return history, state["best"], state["epoch"]


def _resume_state(train_state: TrainState, config: TrainConfig, epochs_done: int, history: list[dict[str, Any]],
                  best: dict[str, Any], rngs: list[dict[str, Any]]) -> dict[str, Any]:
    """The contents of ``resume.pt`` after ``epochs_done`` epochs; ``rngs``: every rank's random streams."""
    ema = train_state.ema.state_dict() if train_state.ema is not None else {}
    return dict(
        epoch=epochs_done, config=config.to_dict(), model=train_state.model.state_dict(), optimizer=train_state.optimizer.state_dict(),
        scheduler=train_state.scheduler.state_dict(), scaler=train_state.scaler.state_dict(), ema=ema,
        rng=rngs, history=history, best=best, sampler=train_state.sampler.state_dict(),
    )


def _train_one_epoch(epoch: int, task: Task, ddp_model: nn.Module, train_state: TrainState, loader: DataLoader,
                     config: TrainConfig, runtime: Runtime, out: Path) -> tuple[float, float, float]:
    """One pass over ``loader`` (epoch ``epoch``, 0-based) training ``ddp_model`` (``train_state.model``, wrapped
    for DDP or itself). Returns ``(mean training loss, images, seconds)``, loss and images over every rank.
    TrainingError at a non-finite loss (see :func:`_stop_at_non_finite`)."""
    model, optimizer, scheduler, scaler, ema, sampler, _ = train_state
    steps = len(loader)
    sampler.set_epoch(epoch)
    ddp_model.train()
    loss_sum, seen = 0.0, 0
    interval_losses: list[torch.Tensor] = []  # still on the device
    interval_counts: list[int] = []
    started = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, dynamic_ncols=True,
               disable=config.quiet or not runtime.is_main)
    for step, batch in enumerate(bar):
        batch = runtime.to_device(batch)
        with runtime.autocast():
            losses, n, per_sample = task.training_losses(ddp_model, batch, epoch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.clip_grad > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        if config.hard_sampling:
            sampler.record(step, per_sample)
        interval_losses.append(loss.detach().float())
        interval_counts.append(n)
        if len(interval_losses) == LOG_INTERVAL or step + 1 == steps:
            # The host reads the losses once per interval, not every step: a read (`.item()`, a finiteness
            # test, an all-reduce) waits until the device has run all the work queued so far, and the device
            # then idles while the host prepares the next step (nanoGPT's train.py logs the same way). A
            # non-finite loss still stops the run before anything is written, since an epoch's last step
            # always ends an interval, and the error names the first bad step.
            values = torch.stack(interval_losses).tolist()
            _stop_at_non_finite(values, runtime, epoch, step + 2 - len(values), out)
            loss_sum += sum(v * k for v, k in zip(values, interval_counts))
            seen += sum(interval_counts)
            interval_losses, interval_counts = [], []
            bar.set_postfix(loss=f"{values[-1]:.4f}", img_s=f"{seen / (time.perf_counter() - started):.0f}", refresh=False)
    bar.close()
    if config.hard_sampling:
        sampler.end_epoch(runtime)
    loss_sum, seen = runtime.sum_over_ranks([loss_sum, seen])
    return loss_sum / max(seen, 1), seen, time.perf_counter() - started


def _end_epoch(epoch: int, task: Task, train_state: TrainState, val_loader: DataLoader, config: TrainConfig, runtime: Runtime,
               out: Path, data: TaskData, history: list[dict[str, Any]], best: dict[str, Any], train_loss: float, images: float,
               seconds: float, train_seconds: float) -> tuple[EvalResult, list[dict[str, Any]], dict[str, Any]]:
    """After epoch ``epoch`` (0-based) trained ``images`` at ``train_loss`` in ``seconds``: evaluate, then (rank 0)
    write ``last.safetensors``, ``best.safetensors`` when the primary metric improved, ``resume.pt``,
    ``metrics.csv`` and ``summary.json``, and print the epoch's line. Returns ``(result, history, best)`` with
    this epoch's row and, if it improved, its value."""
    result = task.evaluate(train_state.eval_model, val_loader, runtime)
    row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": result.metrics["loss"],
           **{k: result.metrics[k] for k in task.metric_columns},
           "lr": train_state.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 1)}
    history = [*history, row]
    value = result.metrics[task.primary_metric]
    improved = value > best["value"]
    if improved:
        best = {"epoch": epoch + 1, "value": value}
    rngs = runtime.gather(rng_state(train_state.generator))
    if runtime.is_main:
        meta = dict(epoch=epoch + 1, metrics=result.metrics)
        task.save_weights(train_state.eval_model, out / "last.safetensors", data.class_names, **meta)
        if improved:
            task.save_weights(train_state.eval_model, out / "best.safetensors", data.class_names, **meta)
        save_state(out / RESUME_FILE, _resume_state(train_state, config, epoch + 1, history, best, rngs))
        report.write_metrics_csv(out, history)
        report.write_summary(out, _summary(config, task, data, history, best, result, train_seconds, out, done=False))
        tqdm.write(_epoch_line(row, task, config.epochs))
    return result, history, best


def _summary(config, task, data, history, best, result, train_seconds, out, done) -> dict[str, Any]:
    """summary.json: the final and best values of the task's primary metric under its own name (``top1``
    and ``best_top1`` for classification, ``bbox_map``, ``miou``, ...) and, for readers of older runs, as
    ``test_acc`` and ``best_acc``; ``val_loss`` is the final evaluation's loss."""
    metric = task.primary_metric
    return {
        "task": task.name,
        "model": config.model,
        "data": data.info,
        "epochs": len(history),
        "epochs_planned": config.epochs,
        "finished": done,
        "primary_metric": metric,
        metric: result.metrics[metric],
        f"best_{metric}": best["value"],
        "best_epoch": best["epoch"],
        "val_loss": result.metrics["loss"],
        "test_acc": result.metrics[metric],
        "best_acc": best["value"],
        "final_metrics": result.metrics,
        "train_seconds": round(train_seconds, 2),
        "skipped_files": len(data.skipped),
        "skipped_examples": data.skipped[:20],
        "out": str(out),
        "details": result.details,
    }
