"""Video in and out through PyAV (FFmpeg's libraries; its wheels bundle them, so ``pip install 'vovnet[video]'`` is
all a machine needs): :class:`VideoReader` decodes a file, camera or stream URL into RGB frames with their
timestamps, :class:`VideoWriter` encodes RGB frames (H.264 where the encoder has it). FFmpeg threads its decoders
and encoders and releases the GIL while it works, so both overlap with inference in other threads.

Every failure a user can cause (a missing, truncated or non-video file, a codec without a decoder, a camera that
does not exist, a stream that does not answer) is a DataError naming the source and the reason.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from ..errors import DataError, UsageError
from .sources import Source

DEFAULT_TIMEOUT = 10.0  # seconds a stream or camera may stay silent, opening or reading
DEFAULT_CODEC = "h264"  # libx264 where the build has it (PyAV's wheels do), else MPEG-4 part 2
MP4_CODECS = frozenset({"h264", "hevc", "mpeg4", "av1", "vp9"})  # families an .mp4 holds; others go into .mkv
TEXT_FORMATS = frozenset({"tty"})  # FFmpeg renders any text file as a video; a text file is not one


@dataclass(frozen=True)
class VideoInfo:
    """What a source says about its video: ``width`` x ``height`` pixels, ``fps`` (None when it gives no rate),
    ``frames`` (the container's count; None when unknown, as for cameras and live streams), ``duration`` in
    seconds (None when unknown), ``codec``, ``live`` (a camera, or a stream without a duration: it runs in real
    time and frames may be dropped) and ``audio`` (it has an audio track, which predictions leave out)."""

    width: int
    height: int
    fps: Fraction | None
    frames: int | None
    duration: float | None
    codec: str
    live: bool
    audio: bool


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame: ``index`` in the source (0 = its first frame), ``time`` in seconds from the source's start,
    ``pixels`` ``[H, W, 3]`` uint8 RGB."""

    index: int
    time: float
    pixels: np.ndarray


def _camera_args(device: str) -> tuple[str, dict]:
    """``cam:N``'s device name and PyAV's open arguments on this platform (V4L2, AVFoundation, DirectShow)."""
    if sys.platform == "darwin":
        return device, {"format": "avfoundation", "options": {"framerate": "30"}}
    if sys.platform == "win32":
        return f"video={device}", {"format": "dshow"}
    return (f"/dev/video{device}" if device.isdigit() else device), {"format": "v4l2"}


def _reason(error: Exception, source: Source, timeout: float) -> str:
    """The one-line reason of an FFmpeg error opening or reading ``source``."""
    if isinstance(error, av.error.ExitError):
        return f"no answer within {timeout:g} s (--timeout)"
    if isinstance(error, FileNotFoundError):
        return "no such camera" if source.kind == "camera" else "no such file"
    if isinstance(error, av.error.InvalidDataError):
        return "not a video FFmpeg can read (invalid data: a truncated or non-video file?)"
    if isinstance(error, av.error.DecoderNotFoundError):
        return "no decoder for its video codec"
    return getattr(error, "strerror", None) or str(error)


class VideoReader:
    """An opened video source (a context manager). ``info`` describes it; :meth:`frames` decodes it.

    Args:
        source: a video file, camera or stream (see :mod:`vovnet.data.sources`).
        timeout: seconds a camera or stream may take to open or to send the next data; then the source fails
            (opening) or stops (reading; ``stopped`` says why).
    Raises DataError naming the source: missing, unreadable, without a video track or a decoder for it.
    """

    def __init__(self, source: Source, timeout: float = DEFAULT_TIMEOUT):
        self.source = source
        self.timeout = timeout
        self.bad_frames = 0  # packets whose decoding failed; the frames after them still come
        self.stopped: str | None = None  # why reading ended before the end of the source
        if source.kind == "camera":
            location, kwargs = _camera_args(source.location.partition(":")[2])
        elif source.kind == "stream":
            location = source.location
            kwargs = {"timeout": (timeout, timeout)}
            if location.lower().startswith("rtsp"):
                kwargs["options"] = {"rtsp_transport": "tcp"}  # no lost UDP packets, hence no smeared frames
        else:
            location, kwargs = source.location, {}
            if not os.path.isfile(location):
                raise DataError(f"{source}: no such file")
        try:
            self._container = av.open(location, **kwargs)
        except av.error.FFmpegError as e:
            raise DataError(f"{source}: {_reason(e, source, timeout)}") from None
        try:
            self._stream = self._check_stream()
        except DataError:
            self._container.close()
            raise
        self._stream.thread_type = "AUTO"  # FFmpeg decodes on frame and slice threads, without the GIL
        self.info = self._read_info()

    def _check_stream(self):
        if self._container.format.name in TEXT_FORMATS:
            raise DataError(f"{self.source}: a text file, not a video")
        if not self._container.streams.video:
            raise DataError(f"{self.source}: no video track")
        stream = self._container.streams.video[0]
        if stream.codec_context is None:
            raise DataError(f"{self.source}: {_reason(av.error.DecoderNotFoundError(0, 'Decoder not found'), self.source, 0)}")
        return stream

    def _read_info(self) -> VideoInfo:
        stream, container = self._stream, self._container
        rate = stream.average_rate or stream.guessed_rate
        duration = container.duration / av.time_base if container.duration else None
        live = self.source.kind == "camera" or (self.source.kind == "stream" and duration is None)
        return VideoInfo(width=stream.codec_context.width, height=stream.codec_context.height, fps=Fraction(rate) if rate else None,
                         frames=(stream.frames or None) if not live else None, duration=duration,
                         codec=stream.codec_context.name, live=live, audio=bool(container.streams.audio))

    def frames(self, start: float = 0.0, end: float | None = None) -> Iterator[DecodedFrame]:
        """Decoded frames from ``start`` seconds (a file seeks to the keyframe before it) up to ``end`` (excluded;
        None: the end of the source). A packet that fails to decode is skipped and counted in ``bad_frames``; a
        stream that stops answering ends the frames with ``stopped`` set. DataError when no packet decodes (a
        file that only looks like a video)."""
        stream = self._stream
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None and not self.info.live else None
        seeked = start > 0 and not self.info.live
        if seeked:
            self._container.seek(round((start + (origin or 0.0)) / stream.time_base), stream=stream, backward=True)
        index, decoded_any = 0, False
        packets = self._container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as e:  # a cut connection or a file truncated mid-packet
                self.stopped = _reason(e, self.source, self.timeout)
                break
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                self.bad_frames += 1
                continue
            for frame in decoded:
                decoded_any = True
                if frame.time is None:
                    time = index / float(self.info.fps or 1)
                else:
                    if origin is None:  # live: time from the first frame
                        origin = frame.time
                    time = frame.time - origin
                    if seeked and self.info.fps:  # the index of a frame after a seek is its place in time
                        index = round(time * float(self.info.fps))
                if time < start - 1e-6:
                    index += 1
                    continue
                if end is not None and time >= end - 1e-6:
                    return
                yield DecodedFrame(index, time, frame.to_ndarray(format="rgb24"))
                index += 1
        if not decoded_any and self.bad_frames:
            raise DataError(f"{self.source}: not a video FFmpeg can read (none of its {self.bad_frames} packets decodes)")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encoder_name(codec: str = DEFAULT_CODEC) -> str:
    """The FFmpeg encoder for ``codec``: ``h264`` is libx264 where the build has it (else MPEG-4 part 2, which
    every build has); any other name is an encoder's own (``libx265``, ``libsvtav1``, ``h264_nvenc``, ``mpeg4``).
    UsageError for an encoder this build lacks."""
    if codec == DEFAULT_CODEC:
        return "libx264" if "libx264" in av.codecs_available else "mpeg4"
    try:
        av.Codec(codec, "w")
    except Exception:  # PyAV raises UnknownCodecError or ValueError by version
        raise UsageError(f"--codec {codec}: not an encoder of this FFmpeg build (e.g. libx264, mpeg4, libx265, libsvtav1)") from None
    return codec


def video_suffix(encoder: str) -> str:
    """``.mp4`` for the codec families an MP4 holds, else ``.mkv`` (Matroska holds any)."""
    return ".mp4" if av.Codec(encoder, "w").canonical_name in MP4_CODECS else ".mkv"


class VideoWriter:
    """Encodes RGB frames into a video file, each at its own timestamp (a source's frame rate and timing, frames
    left out held until the next). ``close`` (or the context's end) flushes the encoder and finishes the file,
    which is then playable whatever the number of frames.

    Args:
        path: the file (its suffix picks the container: see :func:`video_suffix`).
        width, height: the frames' size (an odd size is padded by a pixel: 4:2:0 video needs even sizes).
        fps: the frame rate the timestamps are counted in.
        encoder: an FFmpeg encoder (see :func:`encoder_name`).
        preset: the encoder's speed preset (libx264: ultrafast ... veryslow; None: its default, medium).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: Fraction, encoder: str = "libx264",
                 preset: str | None = None):
        self.path = Path(path)
        self._width, self._height = width, height
        self._container = av.open(str(self.path), "w")
        try:
            self._stream = self._container.add_stream(encoder, rate=fps)
            self._stream.width, self._stream.height = width + width % 2, height + height % 2
            self._stream.pix_fmt = "yuv420p"
            if preset:
                self._stream.options = {"preset": preset}
            self._stream.codec_context.open()  # a wrong preset or size fails here, before any frame
        except (av.error.FFmpegError, ValueError) as e:
            self._container.close()
            raise UsageError(f"{encoder}{f' --preset {preset}' if preset else ''}: the encoder refuses ({e})") from None
        self._rate = Fraction(fps)
        self._last_pts = -1
        self.frames = 0

    def write(self, pixels: np.ndarray, time: float) -> None:
        """Encode ``pixels`` ``[H, W, 3]`` uint8 RGB shown at ``time`` seconds."""
        if pixels.shape[0] % 2 or pixels.shape[1] % 2:
            pixels = np.pad(pixels, ((0, pixels.shape[0] % 2), (0, pixels.shape[1] % 2), (0, 0)), mode="edge")
        # Chroma subsampled here with swscale's fast bilinear filter: its default filter costs 5x as much (about
        # 6 ms a 640x480 frame on 2 cores), more than libx264 itself at the default preset.
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24").reformat(
            format="yuv420p", interpolation="FAST_BILINEAR")
        self._last_pts = frame.pts = max(round(time * self._rate), self._last_pts + 1)
        frame.time_base = 1 / self._rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and write the container's index (idempotent)."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def count_frames(path: str | os.PathLike) -> int:
    """How many frames a video file decodes into (DataError naming it when it cannot be read)."""
    with VideoReader(Source("video", str(path), Path(path).stem)) as reader:
        return sum(1 for _ in reader.frames())
