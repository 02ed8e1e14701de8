"""`vovnet predict` and vovnet.predict_stream on videos: the pipeline's records, timing, frame choice, bad sources,
a loopback HTTP and UDP stream and a clean stop, on 64x48 clips the tests encode (tests/test_video.py's panned photo)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest
import torch
from PIL import Image
from test_video import write_clip

import vovnet
from vovnet.cli import main
from vovnet.data.sources import parse_source
from vovnet.data.video import VideoReader, count_frames
from vovnet.tasks.frames import FramePredictor
from vovnet.tasks.stream import THREAD_TRIALS, FrameStream, ThreadChoice


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 30-frame 30 fps clip and a classifier, segmenter and detector checkpoint of vovnet19_slim_dw at tiny sizes."""
    root = tmp_path_factory.mktemp("stream")
    write_clip(root / "clip.mp4", n=30, fps=30)
    torch.manual_seed(0)
    checkpoints = {
        "classify": vovnet.save_checkpoint(vovnet.create_model("vovnet19_slim_dw", num_classes=3), root / "c.safetensors",
                                           eval_input=dict(img_size=40, crop_pct=1.0)),
        "segment": vovnet.save_segmenter(vovnet.create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["bg", "a"], fpn_channels=16,
                                                                 head_channels=16), root / "s.safetensors"),
        "detect": vovnet.save_detector(vovnet.create_detector("centermask", "vovnet19_slim_dw", ["a", "b"], image_size=48,
                                                              detections_per_img=5), root / "d.safetensors"),
    }
    return root, {k: str(v) for k, v in checkpoints.items()}


def records(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_a_clip_gives_a_video_and_a_record_per_frame_at_the_source_timing(files, tmp_path, capsys):
    root, checkpoints = files
    assert main(["predict", "--checkpoint", checkpoints["classify"], str(root / "clip.mp4"), "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["videos"][0]
    assert (summary["frames_read"], summary["frames_processed"], summary["frames_dropped"], summary["frames_bad"]) == (30, 30, 0, 0)
    assert summary["fps"] > 0 and {"decode_ms", "infer_ms", "draw_ms", "encode_ms"} <= summary.keys()
    rows = records(tmp_path / "clip.jsonl")
    assert [r["frame"] for r in rows] == list(range(30))
    assert [r["time"] for r in rows] == pytest.approx([i / 30 for i in range(30)], abs=1e-6)
    assert len(rows[0]["top"]) == 3 and {"class", "prob"} == rows[0]["top"][0].keys()
    with VideoReader(parse_source(str(tmp_path / "clip.mp4"))) as reader:
        info, drawn = reader.info, list(reader.frames())
    assert (info.width, info.height, info.fps, info.codec) == (64, 48, 30, "h264")
    assert [f.time for f in drawn] == pytest.approx([r["time"] for r in rows], abs=1e-6)


@pytest.mark.parametrize("task", ["classify", "segment", "detect"])
def test_a_frame_predicts_as_the_same_frame_saved_as_an_image(files, tmp_path, capsys, task):
    root, checkpoints = files
    thresh = ["--score-thresh", "0"] if task == "detect" else []  # random weights: every detection, masks and all
    assert main(["predict", "--checkpoint", checkpoints[task], str(root / "clip.mp4"), "--out", str(tmp_path), "--max-frames", "3",
                 *thresh]) == 0
    video_record = records(tmp_path / "clip.jsonl")[2]
    with VideoReader(parse_source(str(root / "clip.mp4"))) as reader:
        frame = next(f for f in reader.frames() if f.index == 2)
    Image.fromarray(frame.pixels).save(tmp_path / "frame.png")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", checkpoints[task], str(tmp_path / "frame.png"), "--json", *thresh]) == 0
    image_record = json.loads(capsys.readouterr().out)[0]
    assert (video_record.pop("frame"), video_record.pop("time")) == (2, pytest.approx(2 / 30, abs=1e-6))
    assert video_record == {k: v for k, v in image_record.items() if k != "image"}
    if task == "detect":
        assert video_record["detections"] and "segmentation" in video_record["detections"][0]


def test_every_max_frames_start_and_end_pick_the_frames(files, tmp_path, capsys):
    root, checkpoints = files
    assert main(["predict", "--checkpoint", checkpoints["segment"], str(root / "clip.mp4"), "--out", str(tmp_path), "--deploy",
                 "--every", "4", "--max-frames", "5", "--start", "0.2", "--end", "0.9", "--batch-size", "2"]) == 0
    assert "5 processed" in capsys.readouterr().out
    rows = records(tmp_path / "clip.jsonl")
    assert [r["frame"] for r in rows] == [6, 10, 14, 18, 22]
    assert [r["time"] for r in rows] == pytest.approx([i / 30 for i in (6, 10, 14, 18, 22)], abs=1e-6)
    assert count_frames(tmp_path / "clip.mp4") == 5


def test_bad_sources_are_one_line_or_skipped_among_several(files, tmp_path, capsys):
    root, checkpoints = files
    data = (root / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    write_clip(tmp_path / "clip.avi", n=3, encoder="mpeg4")
    (tmp_path / "odd.avi").write_bytes((tmp_path / "clip.avi").read_bytes().replace(b"FMP4", b"QQQQ"))
    ck = ["predict", "--checkpoint", checkpoints["classify"]]
    assert main([*ck, str(tmp_path / "cut.mp4")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"vovnet predict: error: {tmp_path / 'cut.mp4'}: not a video FFmpeg can read (invalid data: a truncated or non-video file?)"
    assert main([*ck, str(tmp_path / "cut.mp4"), str(tmp_path / "odd.avi"), str(root / "clip.mp4"), "--max-frames", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("(skipped)") == 2 and "odd.avi: no decoder for its video codec (skipped)" in captured.err
    assert "2 of 3 sources skipped" in captured.out and "2 processed" in captured.out
    assert main([*ck, "cam:97", str(tmp_path / "cut.mp4")]) == 1
    assert "none of the 2 sources could be read" in capsys.readouterr().err
    assert main([*ck, str(root / "clip.mp4"), "--every", "0"]) == 2
    Image.new("RGB", (8, 8)).save(tmp_path / "frame.png")
    assert main([*ck, str(tmp_path / "frame.png"), "--every", "2"]) == 2
    assert "--every applies to video files" in capsys.readouterr().err


def test_a_live_source_drops_the_oldest_frames_when_inference_falls_behind(files):
    root, _ = files

    def slow(inputs):
        time.sleep(0.02)
        return [None] * len(inputs)

    predictor = FramePredictor("classify", lambda pixels: None, slow, lambda p: {}, lambda image, p: image)
    with FrameStream(predictor, str(root / "clip.mp4"), drop="late") as frames:
        assert not frames.dropping  # a file never drops
        frames.dropping = True  # as a camera would: decoding outpaces inference
        got = [index for index, *_ in frames]
    stats = frames.stats
    assert stats.frames_dropped > 0 and stats.frames_processed + stats.frames_dropped == stats.frames_read == 30
    assert got == sorted(got) and len(got) == stats.frames_processed


def test_predict_stream_yields_frames_images_and_predictions_from_a_deployed_model(files):
    root, _ = files
    model = vovnet.deploy(vovnet.create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["bg", "a"], fpn_channels=16, head_channels=16))
    with vovnet.predict_stream(model, str(root / "clip.mp4"), every=10) as frames:
        out = list(frames)
    assert [(i, round(t, 4)) for i, t, _, _ in out] == [(0, 0.0), (10, 0.3333), (20, 0.6667)]
    assert out[0][2].shape == (3, 48, 64) and out[0][2].dtype == torch.uint8 and out[0][3].shape == (48, 64)
    with pytest.raises(vovnet.UsageError, match="a classifier, detector or segmenter of vovnet"):
        vovnet.predict_stream(vovnet.create_model("vovnet19_slim_dw", features_only=True), str(root / "clip.mp4"))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow  # an HTTP server and a timeout
def test_a_loopback_http_stream_reads_as_a_source_and_a_silent_one_times_out(files, tmp_path, capsys):
    root, checkpoints = files
    served = tmp_path / "served"
    served.mkdir()
    write_clip(served / "live.mkv", n=20, fps=20)  # Matroska streams without seeking back for its index
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/live.mkv"
        assert main(["predict", "--checkpoint", checkpoints["classify"], url, "--out", str(tmp_path / "out")]) == 0
    finally:
        server.shutdown()
    rows = records(tmp_path / "out" / "live.jsonl")
    assert [r["frame"] for r in rows] == list(range(20)) and rows[-1]["time"] == pytest.approx(19 / 20)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/cam.mkv"
        assert main(["predict", "--checkpoint", checkpoints["classify"], url, "--timeout", "1"]) == 1
    finally:
        silent.close()
    assert capsys.readouterr().err.strip().endswith(f"{url}: no answer within 1 s (--timeout)")


@pytest.mark.slow  # a subprocess stopped by SIGINT
def test_sigint_mid_run_leaves_a_playable_video_with_every_record(files, tmp_path):
    root, checkpoints = files
    write_clip(tmp_path / "long.mp4", n=400, fps=30)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vovnet", "predict", "--checkpoint", checkpoints["segment"], str(tmp_path / "long.mp4"),
                             "--out", str(out), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    jsonl = out / "long.jsonl"
    deadline = time.monotonic() + 120
    while not (jsonl.exists() and len(jsonl.read_text().splitlines()) >= 5) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    n = len(records(jsonl))
    assert 5 <= n < 400 and "(interrupted)" in stdout
    assert count_frames(out / "long.mp4") == n


@pytest.mark.slow  # a sender thread paced in real time and a timeout
def test_a_loopback_udp_stream_reads_live_until_it_falls_silent(files, tmp_path, capsys):
    root, checkpoints = files
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    url = f"udp://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()
    write_clip(tmp_path / "source.mp4", n=40, fps=20)

    def send():  # MPEG-TS over UDP at the clip's own pace, as a camera or an encoder box sends it
        time.sleep(0.5)  # the reader listens first: UDP keeps nothing for a port nobody reads
        with av.open(str(tmp_path / "source.mp4")) as source, av.open(url + "?pkt_size=1316", "w", format="mpegts") as sink:
            stream = sink.add_stream("mpeg4", rate=20)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for i, frame in enumerate(source.decode(video=0)):
                frame.pts, frame.time_base = i, Fraction(1, 20)
                for packet in stream.encode(frame):
                    sink.mux(packet)
                time.sleep(0.05)
            for packet in stream.encode():
                sink.mux(packet)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", checkpoints["classify"], url, "--out", str(out), "--timeout", "2"]) == 1
    sender.join()
    rows = records(out / f"{parse_source(url).name}.jsonl")
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{url}: the stream stopped (no answer within 2 s (--timeout)); {len(rows)} frames written")
    assert len(rows) >= 30  # loopback UDP may lose a packet; a live source may drop a late frame
    assert all(r["time"] == pytest.approx(r["frame"] / 20) for r in rows) and rows == sorted(rows, key=lambda r: r["frame"])
    assert count_frames(out / f"{parse_source(url).name}.mp4") == len(rows)


def test_the_inference_threads_are_the_faster_count_timed_in_the_pipeline(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    choice = ThreadChoice()
    assert choice.options == [4, 3] and choice.chosen is None
    seconds = {4: 0.020, 3: 0.016}  # per frame, as a small model on a few busy cores
    order = []
    while choice.chosen is None:
        threads = choice.next()
        order.append(threads)
        choice.timed(threads, 1.0 if len(order) == 1 else seconds[threads])  # the first batch, untimed, is slow
    assert order == [4] + [4, 3] * THREAD_TRIALS and choice.chosen == 3 and choice.next() == 3
    slow_fewer = ThreadChoice()
    for _ in range(1 + 2 * THREAD_TRIALS):
        threads = slow_fewer.next()
        slow_fewer.timed(threads, {4: 0.20, 3: 0.26}[threads])  # a large model keeps every thread
    assert slow_fewer.chosen == 4
    assert ThreadChoice(2).chosen == 2 and ThreadChoice(2).next() == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert ThreadChoice().chosen == 1


def test_threads_given_run_the_inference_and_are_reported(files, tmp_path, capsys):
    root, checkpoints = files
    ck = ["predict", "--checkpoint", checkpoints["classify"], str(root / "clip.mp4"), "--max-frames", "4"]
    assert main([*ck, "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["videos"][0]["infer_threads"] == 1
    assert main([*ck, "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "vovnet predict: error: --threads takes 1 or more, got 0"
