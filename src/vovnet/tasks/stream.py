"""Predictions on video files, cameras and streams: a pipeline, not a loop.

Three stages run at once, joined by bounded queues, so each frame's decoding and its drawing and encoding hide
behind the inference of its neighbours::

    decoding thread          inference thread            caller's thread
    decode, pick, prepare -> batch, model -> prediction  -> (index, time, image, prediction): record, draw, encode

FFmpeg (:mod:`vovnet.data.video`) and PyTorch release the GIL while they work, so threads overlap them. The inference
thread's intra-op threads are chosen by timing its own forwards (:class:`ThreadChoice`). A live
source (a camera, a stream without a duration) runs in real time: when inference falls behind, the oldest frame
waiting is dropped (``drop="late"``), so predictions stay current; a file never drops a frame.

:func:`predict_stream` yields the predictions (Python); :func:`predict_video` also writes the annotated video,
the JSON Lines records and the drawn frames (``vovnet predict CLIP --out DIR``).
"""

from __future__ import annotations

import functools
import json
import os
import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..data.sources import Source, output_stems, parse_source
from ..data.video import DEFAULT_CODEC, DEFAULT_TIMEOUT, VideoInfo, VideoReader, VideoWriter, encoder_name, video_suffix
from ..engine.inference import Deployer, load_predictor
from ..engine.task import Task
from ..errors import DataError, UsageError
from .classification import checkpoint_preprocessing
from .detection.predict import DISPLAY_THRESH
from .frames import FramePredictor, frame_predictor, model_task
from .segmentation.task import SegmentationTask

DROP_POLICIES = ("late", "never")
FALLBACK_FPS = Fraction(30)  # the output's frame rate when a source gives none
_END = object()  # a stage's last item
_POLL_S = 0.1  # how often a blocked stage looks at the stop flag
THREAD_TRIALS = 4  # batches timed at each intra-op thread count before the faster is kept


@dataclass
class StreamStats:
    """Counts and clocks of one run. ``frames_read``: decoded in the chosen time range; ``frames_processed``:
    predicted; ``frames_dropped``: left out because inference was behind (live sources); ``frames_bad``: packets
    that failed to decode. Seconds are summed over frames (the stages overlap, so they add up to more than
    ``wall_s``)."""

    frames_read: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    frames_bad: int = 0
    decode_s: float = 0.0
    prepare_s: float = 0.0
    infer_s: float = 0.0
    draw_s: float = 0.0
    encode_s: float = 0.0
    wall_s: float = 0.0
    threads: int = 0
    started: float = field(default_factory=time.perf_counter, repr=False)

    def summary(self) -> dict:
        """The JSON-ready figures: counts, end-to-end ``fps`` (processed frames per wall second) and each stage's
        milliseconds per frame (decoding and preparing per frame read, the rest per frame processed)."""
        read, done = max(self.frames_read, 1), max(self.frames_processed, 1)
        return {
            "frames_read": self.frames_read, "frames_processed": self.frames_processed,
            "frames_dropped": self.frames_dropped, "frames_bad": self.frames_bad,
            "seconds": round(self.wall_s, 3), "fps": round(self.frames_processed / self.wall_s, 2) if self.wall_s else 0.0,
            "decode_ms": round(1e3 * self.decode_s / read, 2), "prepare_ms": round(1e3 * self.prepare_s / read, 2),
            "infer_ms": round(1e3 * self.infer_s / done, 2), "draw_ms": round(1e3 * self.draw_s / done, 2),
            "encode_ms": round(1e3 * self.encode_s / done, 2), "infer_threads": self.threads,
        }


class ThreadChoice:
    """The inference thread's intra-op threads (``torch.set_num_threads`` there, which leaves the other threads' alone).

    ``threads`` given: that many. Otherwise the pipeline times its own forwards, alternately at torch's thread count
    and at one fewer, :data:`THREAD_TRIALS` batches each after an untimed first one, and keeps the faster per frame.
    Timed inside the pipeline, each count pays for the decoding, drawing and encoding it competes with: a small model
    that gains nothing from a second thread on a few cores (a 224 px vovnet19_slim_dw classifier takes the same 16 ms
    on one thread as on two on 2 cores) leaves that core to them; a large one keeps every thread.
    """

    def __init__(self, threads: int | None = None):
        full = torch.get_num_threads()
        self.options = [threads] if threads else [full, full - 1] if full > 1 else [full]
        self.seconds: dict[int, list[float]] = {n: [] for n in self.options}
        self.batches = 0
        self.chosen = self.options[0] if len(self.options) == 1 else None

    def next(self) -> int:
        """The thread count for the next batch."""
        if self.chosen is not None:
            return self.chosen
        return self.options[max(self.batches - 1, 0) % len(self.options)]

    def timed(self, threads: int, seconds_per_frame: float) -> None:
        """Record a batch run on ``threads``; once every count has its trials, keep the one of the lowest median."""
        self.batches += 1
        if self.chosen is not None or self.batches == 1:  # the first forward builds oneDNN's kernels for the shape
            return
        self.seconds[threads].append(seconds_per_frame)
        if all(len(times) >= THREAD_TRIALS for times in self.seconds.values()):
            self.chosen = min(self.options, key=lambda n: statistics.median(self.seconds[n]))


@dataclass
class _Frame:
    index: int
    time: float
    pixels: np.ndarray
    prepared: Any


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _check_options(batch_size: int, every: int, max_frames: int | None, start: float, end: float | None, drop: str,
                   timeout: float, threads: int | None) -> None:
    if batch_size < 1:
        raise UsageError(f"--batch-size takes 1 or more, got {batch_size}")
    if every < 1:
        raise UsageError(f"--every takes 1 or more, got {every}")
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"--max-frames takes 1 or more, got {max_frames}")
    if start < 0 or (end is not None and end <= start):
        raise UsageError(f"--start / --end: a range of seconds from 0 with end after start, got {start} to {end}")
    if drop not in DROP_POLICIES:
        raise UsageError(f"--drop takes {' or '.join(DROP_POLICIES)}, got {drop!r}")
    if timeout <= 0:
        raise UsageError(f"--timeout takes seconds above 0, got {timeout}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads takes 1 or more, got {threads}")


class FrameStream:
    """The pipeline over one source; iterate it for ``(frame_index, timestamp, image, prediction)`` in order
    (``image`` ``[3, H, W]`` uint8 RGB, ``prediction`` as :class:`~vovnet.tasks.frames.FramePredictor` gives it).
    Opening reads the source's header (DataError naming a source that cannot be read); the threads start with the
    iteration; ``close`` (or the context's end, or a ``break`` out of a ``with``) stops and joins them.

    Attributes: ``source``, ``info`` (:class:`~vovnet.data.video.VideoInfo`), ``stats``
    (:class:`StreamStats`, filled as frames go through), ``stopped`` (why a source ended early: a stream that
    stopped answering; None otherwise). See :func:`predict_stream` for the options.
    """

    def __init__(self, predictor: FramePredictor, source: Source | str, *, batch_size: int = 1, every: int = 1,
                 max_frames: int | None = None, start: float = 0.0, end: float | None = None, drop: str = "late",
                 timeout: float = DEFAULT_TIMEOUT, threads: int | None = None):
        _check_options(batch_size, every, max_frames, start, end, drop, timeout, threads)
        self.threads = threads
        self.predictor = predictor
        self.source = parse_source(source) if isinstance(source, str) else source
        self.batch_size, self.every, self.max_frames, self.start, self.end = batch_size, every, max_frames, start, end
        self.reader = VideoReader(self.source, timeout)
        self.info: VideoInfo = self.reader.info
        self.dropping = drop == "late" and self.info.live
        self.stats = StreamStats()
        self._stop = threading.Event()
        # A live source keeps one batch waiting (the freshest frames); a file keeps two, so inference never waits.
        self._frames: queue.Queue = queue.Queue(maxsize=batch_size if self.dropping else 2 * batch_size)
        self._results: queue.Queue = queue.Queue(maxsize=2 * batch_size)
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def stopped(self) -> str | None:
        return self.reader.stopped

    # ---- stages ------------------------------------------------------------------------------
    def _put(self, q: queue.Queue, item) -> bool:
        """Put ``item``, waiting for room unless told to stop; False when stopped."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _offer(self, item: _Frame) -> None:
        """Put a live frame, dropping the oldest waiting one when inference is behind."""
        while True:
            try:
                self._frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._frames.get_nowait()
                    self.stats.frames_dropped += 1
                except queue.Empty:
                    pass

    def _decode(self) -> None:
        stats, prepare = self.stats, self.predictor.prepare
        try:
            frames = self.reader.frames(self.start, self.end)
            submitted = 0
            while not self._stop.is_set():
                t0 = time.perf_counter()
                frame = next(frames, None)
                t1 = time.perf_counter()
                if frame is None:
                    break
                stats.frames_read += 1
                stats.decode_s += t1 - t0
                if (stats.frames_read - 1) % self.every:
                    continue
                item = _Frame(frame.index, frame.time, frame.pixels, prepare(frame.pixels))
                stats.prepare_s += time.perf_counter() - t1
                if self.dropping:
                    self._offer(item)
                elif not self._put(self._frames, item):
                    break
                submitted += 1
                if not self.dropping and self.max_frames is not None and submitted >= self.max_frames:
                    break
            stats.frames_bad = self.reader.bad_frames
            self._put(self._frames, _END)
        except BaseException as e:  # handed to the caller's thread, which raises it
            self._put(self._frames, _Failed(e))

    def _next_batch(self) -> tuple[list[_Frame], bool]:
        """Up to ``batch_size`` frames (a live source: those waiting, without waiting for more) and whether the
        source has ended."""
        batch: list[_Frame] = []
        while len(batch) < self.batch_size:
            try:
                item = self._frames.get(timeout=_POLL_S) if not batch or not self.dropping else self._frames.get_nowait()
            except queue.Empty:
                if batch or self._stop.is_set():
                    return batch, self._stop.is_set()
                continue
            if item is _END:
                return batch, True
            if isinstance(item, _Failed):
                raise item.error
            batch.append(item)
        return batch, False

    def _infer(self) -> None:
        stats, full = self.stats, torch.get_num_threads()
        choice = ThreadChoice(self.threads)
        try:
            ended = False
            while not ended:
                batch, ended = self._next_batch()
                if self.max_frames is not None:
                    batch = batch[: self.max_frames - stats.frames_processed]
                if batch:
                    threads = choice.next()
                    if threads != torch.get_num_threads():
                        torch.set_num_threads(threads)
                    t0 = time.perf_counter()
                    predictions = self.predictor.predict([f.prepared for f in batch])
                    seconds = time.perf_counter() - t0
                    stats.infer_s += seconds
                    choice.timed(threads, seconds / len(batch))
                    stats.threads = choice.chosen or threads
                    for f, prediction in zip(batch, predictions):
                        if not self._put(self._results, (f.index, f.time, f.pixels, prediction)):
                            return
                    stats.frames_processed += len(batch)
                if self.max_frames is not None and stats.frames_processed >= self.max_frames:
                    break
            self._put(self._results, _END)
        except BaseException as e:
            self._put(self._results, _Failed(e))
        finally:
            torch.set_num_threads(full)

    # ---- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, float, torch.Tensor, Any]]:
        if self._closed:
            raise RuntimeError("this FrameStream is closed")
        if not self._threads:
            self.stats.started = time.perf_counter()
            self._threads = [threading.Thread(target=target, name=f"vovnet-{target.__name__.strip('_')}", daemon=True)
                             for target in (self._decode, self._infer)]
            for thread in self._threads:
                thread.start()
        try:
            while True:
                try:
                    item = self._results.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                if isinstance(item, _Failed):
                    raise item.error
                index, when, pixels, prediction = item
                yield index, when, torch.from_numpy(pixels).permute(2, 0, 1), prediction
        finally:
            self.close()

    def close(self) -> None:
        """Stop the stages, wait for them and close the source (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.stats.wall_s = time.perf_counter() - self.stats.started
        self.stats.frames_bad = self.reader.bad_frames
        self.reader.close()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def predict_stream(model: nn.Module, source: Source | str, *, batch_size: int = 1, every: int = 1, max_frames: int | None = None,
                   start: float = 0.0, end: float | None = None, drop: str = "late", timeout: float = DEFAULT_TIMEOUT,
                   threads: int | None = None, **predictor_options: Any) -> FrameStream:
    """Predictions of ``model`` on a video file, camera (``cam:0``) or stream URL (``rtsp://``, ``http(s)://``,
    ``udp://``), frame by frame, through the pipeline (decoding, inference and the caller's work overlapped).

    ``vovnet.predict_stream(model, "clip.mp4")`` yields ``(frame_index, timestamp, image, prediction)``:
    ``frame_index`` counts the source's frames from 0, ``timestamp`` is in seconds from its start, ``image``
    ``[3, H, W]`` uint8 RGB, ``prediction`` a classifier's probabilities ``[num_classes]``, a detector's dict
    (``boxes``, ``labels``, ``scores``, ``masks``) or a segmenter's class map ``[H, W]``, on the CPU. Use it in a
    ``with`` block (or ``close`` it) when leaving early.

    Args:
        model: a classifier, detector or segmenter of the package, eager or :func:`vovnet.deploy` ed, on its device.
        source: a path, ``cam:N`` or URL, or a :class:`~vovnet.data.sources.Source`.
        batch_size: frames per forward.
        every: predict every Nth frame read (1: all).
        max_frames: stop after this many predictions.
        start, end: the time range in seconds (a file seeks to ``start``).
        drop: ``late`` (default): a live source drops the oldest waiting frame when inference falls behind;
            ``never``: it waits (frames pile up in the source's buffer). A file never drops.
        timeout: seconds a camera or stream may stay silent (opening or reading).
        threads: the inference's intra-op threads (None: chosen by timing, see :class:`ThreadChoice`).
        predictor_options: ``class_names``, ``preprocessing``, ``topk``, ``score_thresh``, ``autocast``, ``infer``
            (see :func:`~vovnet.tasks.frames.frame_predictor`).
    """
    return FrameStream(frame_predictor(model, **predictor_options), source, batch_size=batch_size, every=every,
                       max_frames=max_frames, start=start, end=end, drop=drop, timeout=timeout, threads=threads)


# ---- writing ---------------------------------------------------------------------------------
def _jpeg(path: Path, image: torch.Tensor) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=95)


def predict_video(frames: FrameStream, out_dir: str | os.PathLike | None = None, stem: str | None = None, *,
                  codec: str = DEFAULT_CODEC, preset: str | None = None, save_frames: bool = False, progress: bool = True,
                  stop: threading.Event | None = None) -> dict:
    """Run ``frames`` to its end and write, into ``out_dir`` (None: nothing, the figures alone):

    - ``{stem}.mp4`` (``.mkv`` for codecs an MP4 does not hold): each processed frame drawn, at its source
      timestamp (the source's frame rate and size; audio is not kept);
    - ``{stem}.jsonl``: one record per processed frame, in order: ``frame``, ``time`` (seconds) and the task's
      record of an image (``top``; ``detections``; ``size``, ``class_shares``, ``segmentation``);
    - with ``save_frames``, ``{stem}_frames/{frame:06d}.jpg``: the drawn frames.

    Both files are written frame by frame: a stop (``stop`` set, or KeyboardInterrupt) ends the run after the
    frame in hand and leaves a playable video with as many frames as the JSON Lines file has records.

    ``codec``/``preset``: the encoder (see :func:`vovnet.data.video.encoder_name`) and its speed preset;
    ``progress``: a progress bar on stderr (when it is a terminal).

    Returns the run's summary: ``source``, the :meth:`StreamStats.summary` figures, ``video``, ``records``,
    ``frames_dir`` (the files written), ``interrupted``, ``stopped`` (why a stream ended early) and ``notes``
    (such as the audio track left out).
    """
    info, stats, predictor = frames.info, frames.stats, frames.predictor
    stem = stem or frames.source.name
    notes = ["audio is not kept in the annotated video"] if info.audio and out_dir is not None else []
    writer = records = frames_dir = None
    paths: dict[str, str] = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        encoder = encoder_name(codec)
        if codec == DEFAULT_CODEC and encoder != "libx264":
            notes.append(f"this FFmpeg build has no H.264 encoder: the video is {encoder}")
        video = out / f"{stem}{video_suffix(encoder)}"
        if frames.source.is_file and video.resolve() == Path(frames.source.location).resolve():
            raise UsageError(f"{video} would overwrite the source: give another --out")
        writer = VideoWriter(video, info.width, info.height, info.fps or FALLBACK_FPS, encoder, preset)
        records = open(out / f"{stem}.jsonl", "w", encoding="utf-8")
        paths = {"video": str(video), "records": records.name}
        if save_frames:
            frames_dir = out / f"{stem}_frames"
            frames_dir.mkdir(exist_ok=True)
            paths["frames_dir"] = str(frames_dir)
    expected = info.frames if info.frames and not (frames.start or frames.end) else None
    if expected is not None:
        expected = -(-expected // frames.every)
        if frames.max_frames is not None:
            expected = min(expected, frames.max_frames)
    bar = tqdm(total=expected, unit="frame", desc=str(frames.source), disable=None if progress else True, leave=False)
    interrupted = False
    try:
        with frames:
            for index, when, image, prediction in frames:
                t0 = time.perf_counter()
                drawn = predictor.draw(image, prediction) if writer is not None else None
                t1 = time.perf_counter()
                if writer is not None:
                    writer.write(drawn.permute(1, 2, 0).numpy(), when)
                    records.write(json.dumps({"frame": index, "time": round(when, 6), **predictor.record(prediction)}) + "\n")
                    records.flush()
                    if frames_dir is not None:
                        _jpeg(frames_dir / f"{index:06d}.jpg", drawn)
                stats.draw_s += t1 - t0
                stats.encode_s += time.perf_counter() - t1
                bar.update(1)
                if stop is not None and stop.is_set():
                    interrupted = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            records.close()
    return {"source": str(frames.source), **stats.summary(), **paths, "interrupted": interrupted, "stopped": frames.stopped,
            "notes": notes}


@dataclass
class SourcesRun:
    """What :func:`predict_sources` did: ``task``, ``images`` (the task's records of the image files, as
    ``vovnet predict IMAGE...``), ``videos`` (a :func:`predict_video` summary per video source run),
    ``skipped`` (``{"source", "error"}`` of each source that could not be read) and ``interrupted``."""

    task: Task
    images: list[dict]
    videos: list[dict]
    skipped: list[dict]
    interrupted: bool


def predict_sources(checkpoint: str | os.PathLike, sources: list[Source], *, task: str | None = None, topk: int = 5,
                    score_thresh: float | None = None, device: str = "auto", out: str | os.PathLike | None = None,
                    task_options: dict | None = None, deployer: Deployer | None = None, codec: str = DEFAULT_CODEC,
                    preset: str | None = None, save_frames: bool = False, progress: bool = True,
                    stop: threading.Event | None = None, on_skip: Callable[[dict], None] | None = None,
                    **stream_options: Any) -> SourcesRun:
    """``vovnet predict`` on images and videos: the checkpoint loaded once (``deployer``'s copy where given), the
    image files predicted as :func:`vovnet.engine.inference.predict_files` does, each video file, camera and
    stream run through :func:`predict_video` into ``out``.

    A video source that cannot be read (see :class:`~vovnet.data.video.VideoReader`) or a stream that stops
    answering raises DataError naming it when it is the only source; among several it is skipped, listed in
    ``skipped`` and passed to ``on_skip``. ``stop`` (set by a signal handler) ends the run after the frame in hand.
    ``stream_options``: :class:`FrameStream`'s (``batch_size``, ``every``, ``max_frames``, ``start``, ``end``,
    ``drop``, ``timeout``, ``threads``).
    """
    t, model, meta, runtime = load_predictor(checkpoint, task=task, device=device, out=None if out is None else str(out),
                                             task_options=task_options, deployer=deployer)
    if score_thresh is not None and not t.predict_score_thresh:
        raise UsageError(f"--score-thresh does not apply to a {t.name} checkpoint")
    if save_frames and out is None:
        raise UsageError("--save-frames writes into --out DIR: give one")
    images = [s.location for s in sources if s.kind == "image"]
    videos = [s for s in sources if s.kind != "image"]
    rows = t.predict(model, meta, images, runtime, topk, score_thresh) if images else []
    kind = model_task(model)
    predictor = frame_predictor(model, class_names=meta.get("class_names"), topk=topk, autocast=runtime.autocast,
                                score_thresh=DISPLAY_THRESH if score_thresh is None else score_thresh,
                                preprocessing=checkpoint_preprocessing(meta) if kind == "classify" else None,
                                infer=functools.partial(t.infer, model) if isinstance(t, SegmentationTask) else None)
    summaries, skipped, interrupted = [], [], False
    for source, stem in zip(videos, output_stems(videos)):
        try:
            frames = FrameStream(predictor, source, **stream_options)
            summary = predict_video(frames, out, stem, codec=codec, preset=preset, save_frames=save_frames,
                                    progress=progress, stop=stop)
        except DataError as e:
            if len(sources) == 1:
                raise
            skipped.append({"source": str(source), "error": str(e)})
            if on_skip is not None:
                on_skip(skipped[-1])
            continue
        summaries.append(summary)
        if summary["stopped"]:
            error = f"{source}: the stream stopped ({summary['stopped']})"
            if len(sources) == 1:
                raise DataError(f"{error}; {summary['frames_processed']} frames written")
            skipped.append({"source": str(source), "error": error})
            if on_skip is not None:
                on_skip(skipped[-1])
        if summary["interrupted"]:
            interrupted = True
            break
    return SourcesRun(t, rows, summaries, skipped, interrupted)


def format_summary(summary: dict) -> str:
    """One line for a run's summary (see :func:`predict_video`)."""
    s = summary
    line = (f"{s['source']}: {s['frames_read']} frames read, {s['frames_processed']} processed, {s['frames_dropped']} dropped"
            + (f", {s['frames_bad']} failed to decode" if s["frames_bad"] else "")
            + f"; {s['fps']:.1f} frames/s end to end; decode {s['decode_ms']:.1f}, inference {s['infer_ms']:.1f} "
            f"({s['infer_threads']} thread{'s' if s['infer_threads'] != 1 else ''}), "
            f"draw {s['draw_ms']:.1f}, encode {s['encode_ms']:.1f} ms/frame")
    written = [s[k] for k in ("video", "records", "frames_dir") if s.get(k)]
    if written:
        line += " -> " + ", ".join(written)
    if s.get("interrupted"):
        line += " (interrupted)"
    if s.get("stopped"):
        line += f" (the stream stopped: {s['stopped']})"
    return line

