"""Video prediction end to end against inference alone, for benchmarks/RESULTS.md: does the pipeline hide decoding,
drawing and encoding behind inference?

    python benchmarks/video.py [--frames 300] [--codec h264] [--preset medium] [--batch-size 1] [--device cpu|cuda]
                               [--precision fp32] [--only detect classify]

A 640x480, 30 fps clip (a scikit-learn photo panned across the frames, H.264) is written to a temporary folder. For
each model (CenterMask-Lite vovnet19_slim_dw at a 320 px short side; the vovnet19_slim_dw classifier at 224 px),
deployed with vovnet.deploy, one run measures, interleaved:

- inference alone: the same FramePredictor's predict on the clip's frames already decoded and prepared in memory,
  before and after (the mean of the two);
- end to end: predict_video on the clip (decode, prepare, infer, draw, encode, JSON Lines), as `vovnet predict
  CLIP --deploy --out DIR` runs it (the pipeline picks its inference threads by timing: see the summary's
  infer_threads).

Prints one markdown row per model with the ratio, each stage's ms per frame and the peak RSS, and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

import vovnet
from vovnet.data.sources import parse_source
from vovnet.data.video import VideoReader, VideoWriter, encoder_name
from vovnet.engine.runtime import cpu_name
from vovnet.tasks.frames import frame_predictor
from vovnet.tasks.stream import FrameStream, predict_video

TARGETS = {"detect": 0.9, "classify": 0.8}  # end-to-end frames/s over inference-only frames/s, at least


def write_clip(path: Path, frames: int, width: int = 640, height: int = 480, fps: int = 30) -> None:
    """``frames`` frames of ``width`` x ``height``: a window panning 4 px a frame across china.jpg scaled to 1.5x."""
    photo = np.asarray(Image.fromarray(load_sample_image("china.jpg")).resize((960, 640), Image.BILINEAR))
    steps = (photo.shape[1] - width) // 4
    with VideoWriter(path, width, height, Fraction(fps), encoder_name("h264")) as writer:
        for i in range(frames):
            x = 4 * (i % steps)
            writer.write(np.ascontiguousarray(photo[80:80 + height, x:x + width]), i / fps)


def build(task: str, device: str, precision: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if task == "detect":
        model = vovnet.create_detector("centermask", "vovnet19_slim_dw", [f"class{i}" for i in range(80)], image_size=320)
    else:
        model = vovnet.create_model("vovnet19_slim_dw", num_classes=1000)
    return vovnet.deploy(model.eval().to(device), precision, device=device)


def inference_only(predictor, prepared: list, batch_size: int) -> float:
    """Frames per second of ``predictor.predict`` alone over ``prepared``, on a worker thread as the pipeline runs it
    (on a loaded machine the main thread's OpenMP team ran the same forward up to 10x slower)."""
    seconds = []

    def work():
        start = time.perf_counter()
        for i in range(0, len(prepared), batch_size):
            predictor.predict(prepared[i:i + batch_size])
        seconds.append(time.perf_counter() - start)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return len(prepared) / seconds[0]


def run(task: str, clip: Path, out: Path, args) -> dict:
    model = build(task, args.device, args.precision)
    predictor = frame_predictor(model)  # the classifier's preprocessing: its 224 px record
    with VideoReader(parse_source(str(clip))) as reader:
        prepared = [predictor.prepare(f.pixels) for f in reader.frames()]
    predictor.predict(prepared[: args.batch_size])  # warm-up: oneDNN packs the weights for the input shape
    before = inference_only(predictor, prepared, args.batch_size)
    frames = FrameStream(predictor, str(clip), batch_size=args.batch_size)
    summary = predict_video(frames, out, task, codec=args.codec, preset=args.preset, progress=False)
    after = inference_only(predictor, prepared, args.batch_size)
    infer_fps = (before + after) / 2
    return {"task": task, "inference_fps": round(infer_fps, 2), "inference_fps_before_after": [round(before, 2), round(after, 2)],
            "end_to_end_fps": summary["fps"], "ratio": round(summary["fps"] / infer_fps, 3), "target": TARGETS[task],
            "summary": summary}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--codec", default="h264")
    p.add_argument("--preset", help="the encoder's speed preset (default: its own, libx264's medium)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--precision", default="fp32", help="vovnet.deploy's precision (fp32, bf16, fp16)")
    p.add_argument("--only", nargs="*", choices=list(TARGETS))
    p.add_argument("--out", default="video_bench.json")
    args = p.parse_args()
    results = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
               "load_average_before": os.getloadavg(), "codec": encoder_name(args.codec), "preset": args.preset or "default",
               "runs": []}
    print(f"{results['cpu']}, {results['threads']} threads, load average {results['load_average_before'][0]:.1f}, "
          f"{results['codec']} preset {results['preset']}")
    print("| model | inference-only frames/s | end-to-end frames/s | ratio (target) | decode / prepare / infer / draw / "
          "encode ms per frame | inference threads | dropped |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_clip(clip, args.frames)
        for task in TARGETS:
            if args.only and task not in args.only:
                continue
            r = run(task, clip, Path(tmp) / "out", args)
            s = r["summary"]
            results["runs"].append(r)
            name = {"detect": "CenterMask-Lite V-19-Slim-DW, 320 px, deployed", "classify": "V-19-Slim-DW classifier, 224 px, deployed"}[task]
            print(f"| {name} | {r['inference_fps']:.1f} | {r['end_to_end_fps']:.1f} | {r['ratio']:.2f} (>= {r['target']}) | "
                  f"{s['decode_ms']:.1f} / {s['prepare_ms']:.1f} / {s['infer_ms']:.1f} / {s['draw_ms']:.1f} / {s['encode_ms']:.1f} | "
                  f"{s['infer_threads']} | {s['frames_dropped']} |", flush=True)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["load_average_after"] = os.getloadavg()
    print(f"peak RSS {results['peak_rss_mb']:.0f} MB; load average after {results['load_average_after'][0]:.1f}")
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
