"""Video in and out (vovnet.data.video, vovnet.data.sources) on clips the tests encode themselves: a photo of
scikit-learn's panned across 64x48 frames."""

from fractions import Fraction

import numpy as np
import pytest
from sklearn.datasets import load_sample_image

from vovnet.data.sources import expand_sources, output_stems, parse_source
from vovnet.data.video import VideoReader, VideoWriter, count_frames, encoder_name, video_suffix
from vovnet.errors import DataError, UsageError

W, H = 64, 48


def panned_frames(n: int) -> list[np.ndarray]:
    """``n`` RGB frames of W x H: a window moving 3 px a frame across china.jpg (back to its left edge at the right)."""
    photo = load_sample_image("china.jpg")
    steps = (photo.shape[1] - W) // 3
    return [np.ascontiguousarray(photo[150:150 + H, 3 * (i % steps):3 * (i % steps) + W]) for i in range(n)]


def write_clip(path, n: int = 30, fps: int = 30, encoder: str = "libx264") -> list[np.ndarray]:
    """Encode ``n`` panned frames at ``fps`` into ``path``; returns the frames."""
    frames = panned_frames(n)
    with VideoWriter(path, W, H, Fraction(fps), encoder) as writer:
        for i, pixels in enumerate(frames):
            writer.write(pixels, i / fps)
    return frames


def test_a_clip_decodes_into_its_frames_at_their_timestamps(tmp_path):
    frames = write_clip(tmp_path / "clip.mp4", n=24, fps=24)
    with VideoReader(parse_source(str(tmp_path / "clip.mp4"))) as reader:
        assert (reader.info.width, reader.info.height, reader.info.fps, reader.info.frames) == (W, H, 24, 24)
        assert not reader.info.live and not reader.info.audio and reader.info.codec == "h264"
        decoded = list(reader.frames())
    assert [f.index for f in decoded] == list(range(24))
    assert [f.time for f in decoded] == pytest.approx([i / 24 for i in range(24)])
    error = np.abs(decoded[5].pixels.astype(int) - frames[5]).mean()
    assert decoded[5].pixels.shape == (H, W, 3) and error < 8  # H.264 at its default quality


def test_start_and_end_pick_a_time_range_with_the_source_indices(tmp_path):
    write_clip(tmp_path / "clip.mp4", n=30, fps=30)
    with VideoReader(parse_source(str(tmp_path / "clip.mp4"))) as reader:
        picked = list(reader.frames(start=0.5, end=0.7))
    assert [f.index for f in picked] == [15, 16, 17, 18, 19, 20]
    assert [f.time for f in picked] == pytest.approx([i / 30 for i in range(15, 21)])


def test_the_writer_keeps_odd_sizes_playable_and_mpeg4_goes_where_h264_cannot(tmp_path):
    with VideoWriter(tmp_path / "odd.mp4", 33, 21, Fraction(10), "mpeg4") as writer:
        for i in range(5):
            writer.write(np.full((21, 33, 3), 40 * i, np.uint8), i / 10)
    assert count_frames(tmp_path / "odd.mp4") == 5
    assert video_suffix("libx264") == ".mp4" and video_suffix(encoder_name("h264")) == ".mp4"
    with pytest.raises(UsageError, match="--codec nope: not an encoder"):
        encoder_name("nope")
    with pytest.raises(UsageError, match="encoder refuses"):
        VideoWriter(tmp_path / "x.mp4", W, H, Fraction(30), "libx264", preset="warp-speed")


def test_bad_sources_are_one_line_naming_them(tmp_path):
    write_clip(tmp_path / "clip.mp4", n=10)
    data = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])  # MP4's index comes last: gone
    (tmp_path / "notes.txt").write_text("not a video\n" * 50)
    (tmp_path / "photo.mp4").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    write_clip(tmp_path / "clip.avi", n=5, encoder="mpeg4")
    (tmp_path / "odd.avi").write_bytes((tmp_path / "clip.avi").read_bytes().replace(b"FMP4", b"QQQQ"))  # a FourCC nobody decodes
    expected = {
        "missing.mp4": "no such file", "half.mp4": "not a video FFmpeg can read", "notes.txt": "a text file, not a video",
        "odd.avi": "no decoder for its video codec",
    }
    for name, reason in expected.items():
        with pytest.raises(DataError) as caught:
            VideoReader(parse_source(str(tmp_path / name)))
        assert str(caught.value).startswith(f"{tmp_path / name}: {reason}"), str(caught.value)
    with VideoReader(parse_source(str(tmp_path / "photo.mp4"))) as reader, pytest.raises(DataError) as caught:
        list(reader.frames())  # FFmpeg opens it as a PNG stream; no packet decodes
    assert str(caught.value).startswith(f"{tmp_path / 'photo.mp4'}: not a video FFmpeg can read")
    with pytest.raises(DataError, match="^cam:97: no such camera"):
        VideoReader(parse_source("cam:97"))


def test_a_file_cut_mid_stream_gives_the_frames_before_the_cut(tmp_path):
    write_clip(tmp_path / "clip.mkv", n=30)  # Matroska writes as it goes: a cut file still opens
    data = (tmp_path / "clip.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: int(len(data) * 0.6)])
    with VideoReader(parse_source(str(tmp_path / "cut.mkv"))) as reader:
        decoded = list(reader.frames())
    assert 5 < len(decoded) < 30
    assert [f.index for f in decoded] == list(range(len(decoded)))


def test_sources_from_files_folders_globs_cameras_and_urls(tmp_path):
    write_clip(tmp_path / "b.mp4", n=2)
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "skip.txt").write_text("x")
    found = expand_sources([str(tmp_path), str(tmp_path / "*.mp4"), "cam:0", "rtsp://host:554/live/front?x=1", "clip.MOV"])
    assert [(s.kind, s.name) for s in found] == [("image", "a"), ("video", "b"), ("video", "b"), ("camera", "cam0"),
                                                 ("stream", "front"), ("video", "clip")]
    assert output_stems(found) == ["a", "b", "b-2", "cam0", "front", "clip"]
    assert parse_source("http://127.0.0.1:8000/clip.mkv").kind == "stream"
    with pytest.raises(DataError, match="no file matches"):
        expand_sources([str(tmp_path / "*.avi")])
