"""``vovnet predict``: a checkpoint's predictions for images, videos, cameras and streams: a classifier's top-k classes
with probabilities, a detector's detections scoring at least --score-thresh (class, score, box; masks as COCO RLE), a
segmenter's share of each class and each class's pixels as COCO RLE; with --out, drawings and predictions.json. A
detector's --format coco writes every detection as a COCO results file (DIR/coco_results.json) for pycocotools or
faster-coco-eval.

A video file (mp4, mkv, avi, mov, webm, ...), camera (cam:0) or stream URL (rtsp://, http(s)://, udp://) runs through a
pipeline (decoding, inference, drawing and encoding at once) and, with --out DIR, gives DIR/NAME.mp4 (each processed
frame drawn, at the source's frame rate and size; audio left out) and DIR/NAME.jsonl (one record a frame: frame,
time and the image record). A live source drops frames when inference falls behind (--drop late); a file never does.
Ctrl-C or SIGTERM stops after the frame in hand and leaves both files complete."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

from ..errors import DataError, UsageError
from .options import add_deploy_flags, add_option_flag, deployer, task_options

# Video flags and their defaults: given with image files alone, they are refused rather than ignored.
VIDEO_DEFAULTS = {"batch_size": 1, "every": 1, "max_frames": None, "start": 0.0, "end": None, "drop": "late",
                  "timeout": 10.0, "codec": "h264", "preset": None, "save_frames": False, "threads": None}


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict with a checkpoint on images, videos, cameras and streams: classes, "
                       "detections or class maps", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a vovnet checkpoint (written by `vovnet train`, `convert` or `pull`)")
    p.add_argument("--task", help="task of the checkpoint (default: read from it, else classify)")
    p.add_argument("--topk", type=int, default=5, help="classify: classes to show per image (default: 5)")
    p.add_argument("--score-thresh", type=float, metavar="S", help="detect: list and draw the detections scoring at "
                   "least S (default: 0.5)")
    p.add_argument("--format", dest="output_format", default="json", choices=("json", "coco"),
                   help="json (default): per-image records, printed and, with --out, in predictions.json; coco (detect, with "
                   "--out DIR, image files): every detection the model returns in DIR/coco_results.json, with the COCO "
                   "image ids the file names are (000000000139.jpg)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run (default: auto)")
    add_deploy_flags(p, "predict with")
    p.add_argument("--json", action="store_true", help="print JSON: the images' records, each video's run summary")
    add_option_flag(p)
    p.add_argument("--out", metavar="DIR", help="write outputs here (detect: each image with its detections drawn; "
                   "segment: colour overlays and class-index PNGs; plus predictions.json; a video: NAME.mp4 drawn and "
                   "NAME.jsonl), or with --format coco the COCO results file")
    video = p.add_argument_group("video files, cameras and streams")
    video.add_argument("--batch-size", type=int, default=1, metavar="N", help="frames per forward (default: 1)")
    video.add_argument("--every", type=int, default=1, metavar="N", help="predict every Nth frame (default: 1, all)")
    video.add_argument("--max-frames", type=int, metavar="N", help="stop after N predicted frames")
    video.add_argument("--start", type=float, default=0.0, metavar="S", help="from S seconds into the source (default: 0)")
    video.add_argument("--end", type=float, metavar="S", help="up to S seconds into the source (default: its end)")
    video.add_argument("--drop", default="late", choices=("late", "never"), help="a camera or live stream: late (default) "
                       "drops the oldest waiting frame when inference falls behind; never waits (a file never drops)")
    video.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds a camera or stream may stay "
                       "silent, connecting or reading (default: 10)")
    video.add_argument("--codec", default="h264", help="the annotated video's encoder: h264 (default; libx264, else "
                       "mpeg4), or an FFmpeg encoder name (libx265, libsvtav1, mpeg4, h264_nvenc, ...)")
    video.add_argument("--preset", help="the encoder's speed preset (libx264: ultrafast, superfast, veryfast, faster, "
                       "fast, medium (its default), slow, ...)")
    video.add_argument("--threads", type=int, metavar="N", help="the inference's intra-op threads (default: chosen by "
                       "timing the first frames on all of torch's threads and on one fewer, which leaves a core to decoding "
                       "and encoding when the model gains nothing from it)")
    video.add_argument("--save-frames", action="store_true", help="also write each drawn frame to DIR/NAME_frames/")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image and video files, folders, quoted globs "
                   "('clips/*.mp4'), cameras (cam:0) and stream URLs (rtsp://, http(s)://, udp://)")
    p.set_defaults(run=run)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """While running, the first SIGINT or SIGTERM sets ``stop`` (the run ends after the frame in hand, its files
    complete); a second SIGINT interrupts at once."""
    def first(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("vovnet predict: stopping after the frame in hand (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, first) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(args) -> int:
    from ..data.sources import expand_sources
    from . import print_json

    sources = expand_sources(args.sources)
    if all(s.kind == "image" for s in sources):
        changed = [name for name, default in VIDEO_DEFAULTS.items() if getattr(args, name) != default]
        if changed:
            raise UsageError(f"--{changed[0].replace('_', '-')} applies to video files, cameras and streams")
        return _predict_images(args, [s.location for s in sources])
    if args.output_format != "json":
        raise UsageError("--format coco applies to image files, not to videos, cameras or streams")
    try:
        from ..tasks.stream import format_summary, predict_sources
    except ModuleNotFoundError as e:
        if e.name != "av":
            raise
        raise UsageError("video files, cameras and streams need PyAV: pip install 'vovnet[video]'") from None

    def skipped(entry: dict) -> None:
        print(f"vovnet predict: {entry['error']} (skipped)", file=sys.stderr, flush=True)

    stop = threading.Event()
    with _stop_on_signals(stop):
        result = predict_sources(args.checkpoint, sources, task=args.task, topk=args.topk, score_thresh=args.score_thresh,
                                 device=args.device, out=args.out, task_options=task_options(args.option),
                                 deployer=deployer(args, "predict"), stop=stop, on_skip=skipped,
                                 **{name: getattr(args, name) for name in VIDEO_DEFAULTS})
    for note in dict.fromkeys(n for s in result.videos for n in s["notes"]):  # each note once
        print(f"vovnet predict: {note}", file=sys.stderr)
    if args.json:
        print_json({"images": result.images, "videos": result.videos, "skipped": result.skipped})
    else:
        if result.images:
            print(result.task.format_predictions(result.images))
        for summary in result.videos:
            print(format_summary(summary))
        if result.skipped:
            print(f"{len(result.skipped)} of {len(sources)} sources skipped")
    if result.interrupted:
        return 130
    if result.skipped and not result.videos and not result.images:
        raise DataError(f"none of the {len(sources)} sources could be read")
    return 0


def _predict_images(args, images: list[str]) -> int:
    from ..engine.inference import predict_files
    from . import print_json

    task, rows = predict_files(args.checkpoint, images, task=args.task, topk=args.topk, score_thresh=args.score_thresh,
                               output_format=args.output_format, device=args.device, out=args.out,
                               task_options=task_options(args.option), deployer=deployer(args, "predict"))
    if args.json:
        print_json(rows)
    else:
        print(task.format_predictions(rows))
    return 0
