"""What ``vovnet predict`` reads: image files, video files, cameras and stream URLs, from the arguments a user types
(files, folders, globs, ``cam:0``, ``rtsp://...``). Names only: nothing here opens a file or needs a decoder."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from ..errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
                            ".wmv", ".ogv", ".3gp", ".y4m", ".h264", ".hevc", ".gifv"})
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
CAMERA_PREFIX = "cam:"
GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Source:
    """One thing to predict on.

    ``kind``: ``image`` or ``video`` (a file), ``camera`` (``cam:N``, ``location`` the N) or ``stream`` (a URL);
    ``location``: the path, camera or URL as given; ``name``: a file-name stem for its outputs.
    """

    kind: str
    location: str
    name: str

    @property
    def is_file(self) -> bool:
        return self.kind in ("image", "video")

    def __str__(self) -> str:
        return self.location


def _stem(text: str) -> str:
    """A file-name stem from a path, camera or URL: its last non-empty part, with anything but letters, digits,
    ``-``, ``_`` and ``.`` made ``_``."""
    parts = [p for p in re.split(r"[/\\:]+", text) if p]
    last = Path(parts[-1]).stem if parts else "stream"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", last) or "stream"


def _file_kind(path: Path) -> str:
    """``image`` or ``video`` by the suffix; for an unknown one, ``image`` when PIL recognises the header."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    try:
        with Image.open(path):
            return "image"
    except (OSError, ValueError, Image.DecompressionBombError):
        return "video"  # whatever the video decoder reads; it names the file if it cannot


def parse_source(item: str) -> Source:
    """One argument as a :class:`Source` (no glob or folder expansion: see :func:`expand_sources`)."""
    if item.startswith(CAMERA_PREFIX):
        device = item[len(CAMERA_PREFIX):]
        if not device:
            raise DataError(f"{item}: a camera is cam:N (cam:0 is the first)")
        return Source("camera", item, f"cam{_stem(device)}")
    scheme = item.partition("://")[0].lower() if "://" in item else ""
    if scheme in STREAM_SCHEMES:
        url = urlsplit(item)
        return Source("stream", item, _stem(url.path or url.netloc))
    if scheme == "file":
        item = item.partition("://")[2]
    path = Path(item)
    return Source(_file_kind(path) if path.is_file() else _suffix_kind(path), item, path.stem or "source")


def _suffix_kind(path: Path) -> str:
    """A missing file's kind by its suffix alone, so its reader names it (``no such file``)."""
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def _folder_files(folder: Path) -> list[str]:
    """The image and video files directly in ``folder``, sorted by name."""
    known = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in known)


def expand_sources(items: list[str]) -> list[Source]:
    """The arguments of ``vovnet predict`` as sources, in order: a folder gives its image and video files (sorted),
    a glob (``'clips/*.mp4'``, quoted so the shell leaves it) its matches (sorted); anything else one source,
    checked when it is read (a missing file is named then). DataError for a folder or glob that gives nothing."""
    sources = []
    for item in items:
        if not item.startswith(CAMERA_PREFIX) and "://" not in item:
            if os.path.isdir(item):
                found = _folder_files(Path(item))
                if not found:
                    raise DataError(f"{item}: no image or video files in this folder")
                sources += [parse_source(p) for p in found]
                continue
            if GLOB_CHARS.search(item) and not os.path.exists(item):
                found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
                if not found:
                    raise DataError(f"{item}: no file matches")
                sources += [parse_source(p) for p in found]
                continue
        sources.append(parse_source(item))
    return sources


def output_stems(sources: list[Source]) -> list[str]:
    """One distinct file-name stem per source (``clip``, ``clip-2``, ... for same-named sources)."""
    seen: dict[str, int] = {}
    stems = []
    for source in sources:
        n = seen.get(source.name, 0) + 1
        seen[source.name] = n
        stems.append(source.name if n == 1 else f"{source.name}-{n}")
    return stems
