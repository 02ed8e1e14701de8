"""Pretrained weights by tag: found or downloaded once, verified, converted to our format and cached.

Where a tag's file is looked for, in order: the cache (``$VOVNET_HOME``, else torch.hub's
``checkpoints`` folder, where timm's older release files already land), timm's Hugging Face cache
(read without any network call), ``$VOVNET_MIRROR`` (a folder or a URL prefix holding the file under
its registry ``file`` name), then each published URL. ``VOVNET_OFFLINE=1`` stops before the network.

A download goes to a temporary file beside its destination and is renamed into place only once it is
complete (its Content-Length), its checksum matches where one is published, and it starts like a
checkpoint (Dropbox answers some clients with a web page). The converted safetensors file,
``<tag>.safetensors``, sits beside the original and records the tag, the source URL and the original's
sha256. A file lock per tag makes concurrent processes (torchrun ranks) download and convert once.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from ..errors import DownloadError, UsageError
from ..io import atomic_open
from ..models.input_format import InputFormat
from .checkpoint import HEAD_SIZE, convert_file, file_kind, read_checkpoint
from .pretrained import PretrainedWeights, WeightFile, as_tag, get_pretrained

try:  # POSIX; elsewhere concurrent pulls of one tag may both download (the renames stay atomic)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

ENV_HOME, ENV_MIRROR, ENV_OFFLINE = "VOVNET_HOME", "VOVNET_MIRROR", "VOVNET_OFFLINE"
TIMEOUT_S = 30
_CHUNK = 1 << 20
_HF_URL = re.compile(r"^https://huggingface\.co/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def cache_dir() -> Path:
    """``$VOVNET_HOME``, else torch.hub's ``<hub dir>/checkpoints`` (``$TORCH_HOME/hub/checkpoints``)."""
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser() if home else Path(torch.hub.get_dir()) / "checkpoints"


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def converted_path(tag: str) -> Path:
    """Where ``tag``'s converted checkpoint is cached."""
    return cache_dir() / f"{tag}.safetensors"


def is_cached(tag: str) -> bool:
    return converted_path(tag).is_file()


def pull(tag: str, *, progress: bool = True, convert: Callable[[Path, Path, dict], object] | None = None) -> Path:
    """``tag``'s converted checkpoint, downloading, verifying and converting it first if needed.

    ``convert(original, dst, provenance)`` writes the checkpoint instead of the backbone converter: a whole
    detector's tag needs the detection task's (``vovnet.weights.official_detectors.pull_detector``).
    Raises DownloadError (one line: the tag, each place tried and why it failed, what to do by hand)
    when no copy can be had, UsageError for an unknown tag or a detector's without ``convert``.
    """
    record = get_pretrained(tag)
    if record.task != "classify" and convert is None:
        raise UsageError(f"{tag} is a whole {record.detector} detector, not a backbone: vovnet.load_detector({tag!r}) or `vovnet pull {tag}`")
    dst = converted_path(tag)
    if dst.is_file():
        return dst
    with _locked(cache_dir() / ".locks" / f"{tag}.lock"):
        if dst.is_file():  # another process converted it while this one waited
            return dst
        original, url, digest = _obtain(record, progress)
        provenance = dict(pretrained_tag=tag, source_url=url, source_sha256=digest, license=record.license)
        if convert is not None:
            convert(original, dst, provenance)
        else:
            convert_file(original, dst, record.layout, record.model, options=record.options,
                         preprocessing=record.preprocessing.to_dict(), **provenance)
    return dst


def pretrained_file(pretrained: str | os.PathLike) -> Path:
    """The checkpoint ``pretrained`` names: a tag's converted file (pulled if needed) or the path itself."""
    tag = as_tag(pretrained)
    return pull(tag) if tag else Path(pretrained)


def pretrained_preprocessing(pretrained: str | os.PathLike) -> dict | None:
    """The input a tag's or a checkpoint's weights expect (``model.preprocessing`` form), or None when a
    foreign file does not say. A tag needs no download for this."""
    tag = as_tag(pretrained)
    if tag:
        return get_pretrained(tag).preprocessing.to_dict()
    _, meta = read_checkpoint(pretrained)
    return (meta or {}).get("preprocessing")


def weights_input_format(pretrained: str | os.PathLike | None) -> InputFormat | None:
    """The input format backbone weights ``pretrained`` (a tag or a checkpoint file) were trained on, or None
    when there are none or the file does not say. A tag needs no download for this."""
    if not pretrained:
        return None
    record = pretrained_preprocessing(pretrained)
    return InputFormat.from_record(record) if record else None


# ---- finding a copy ------------------------------------------------------------------------------
class _Failed(Exception):
    """One place that did not give a usable copy; the message says why."""


def _obtain(record: PretrainedWeights, progress: bool) -> tuple[Path, str, str]:
    """``(local original, where it came from, its sha256)``; DownloadError when every place fails."""
    tried: list[str] = []
    not_tried = [] if not offline() else [url for f in record.files for url in f.urls]
    cache = cache_dir()
    for f in record.files:  # already here: nothing to download
        for path, origin in ((cache / f.file, f.urls[0] if f.urls else f.page), *_hf_cached(f)):
            if path.is_file():
                try:
                    return path, origin, _verified_digest(path, f)
                except _Failed as e:
                    tried.append(f"{path}: {e}")
    for f, source in _mirror_sources(record):
        if _is_url(source) and not source.startswith("file:") and offline():
            not_tried.insert(0, source)
            continue
        try:
            return _fetch(source, cache / f.file, f, progress)
        except _Failed as e:
            tried.append(f"{source}: {e}")
    if not offline():
        for f in record.files:
            for url in f.urls:
                try:
                    return _fetch(url, cache / f.file, f, progress)
                except _Failed as e:
                    tried.append(f"{url}: {e}")
    raise DownloadError(_unavailable(record, tried, not_tried))


def _hf_cached(f: WeightFile) -> list[tuple[Path, str]]:
    """``f``'s Hugging Face URLs that timm already downloaded into the HF cache (no network call)."""
    found = []
    for url in f.urls:
        m = _HF_URL.match(url)
        if m is None:
            continue
        try:
            from huggingface_hub import try_to_load_from_cache  # optional; only its cache is read
        except ImportError:
            return []
        path = try_to_load_from_cache(m.group(1), m.group(3), revision=m.group(2))
        if isinstance(path, str):
            found.append((Path(path), url))
    return found


def _mirror_sources(record: PretrainedWeights) -> list[tuple[WeightFile, str]]:
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    if not mirror:
        return []
    if _is_url(mirror):
        return [(f, mirror.rstrip("/") + "/" + f.file) for f in record.files]
    return [(f, str(Path(mirror).expanduser() / f.file)) for f in record.files]


def _is_url(source: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source) is not None


def _unavailable(record: PretrainedWeights, tried: list[str], not_tried: list[str]) -> str:
    if not record.urls:  # a host that serves no URL: the way by hand is the answer, whatever else was tried
        page = record.files[0].page
        refused = f" (found but refused: {'; '.join(tried)})" if tried else ""
        return (f"{record.tag}: {record.file} cannot be fetched by URL{refused}; by hand: download it from {page} into "
                f"{cache_dir()} (or a {ENV_MIRROR} folder), then run `vovnet pull {record.tag}` again")
    where = "; ".join(tried) if tried else "nothing"
    if not_tried:
        where += f"; {ENV_OFFLINE}=1, so {', '.join(not_tried)} not tried"
    by_hand = f"put {record.file} (from {record.urls[0]}) into {cache_dir()}, where it is checked and converted on next use"
    if not record.options:  # `vovnet convert` reads the options off the shapes; these need none
        by_hand += f", or run `vovnet convert --from {record.layout} {record.file} OUT.safetensors` and pass OUT.safetensors"
    return f"{record.tag}: no usable copy of {record.file} (tried: {where}). By hand: {by_hand}; or set {ENV_MIRROR} to a folder or URL prefix holding it"


# ---- downloading and checking --------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _open(source: str) -> Iterator[tuple[object, int | None]]:
    """``(readable stream, expected size or None)`` for a URL or a local path; _Failed with the reason."""
    try:
        if _is_url(source):
            request = urllib.request.Request(source, headers={"User-Agent": "vovnet"})
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                yield response, int(length) if length and length.isdigit() else None
        else:
            with open(source, "rb") as stream:
                yield stream, os.fstat(stream.fileno()).st_size
    except urllib.error.HTTPError as e:
        raise _Failed(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _Failed(str(e.reason)) from None
    except FileNotFoundError:
        raise _Failed("no such file") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _Failed(str(e) or type(e).__name__) from None


def _fetch(source: str, dst: Path, f: WeightFile, progress: bool) -> tuple[Path, str, str]:
    """Copy ``source`` to ``dst`` through a temporary file (:func:`vovnet.io.atomic_open`), renamed only once
    complete and verified."""
    digest, size, head = hashlib.sha256(), 0, b""
    with atomic_open(dst) as out, _open(source) as (stream, total):
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f.file, leave=False,
                  disable=None if progress else True) as bar:
            try:
                while chunk := stream.read(_CHUNK):
                    if len(head) < HEAD_SIZE:
                        head += chunk[: HEAD_SIZE - len(head)]
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise _Failed(f"connection lost after {size} of {total or '?'} bytes ({type(e).__name__})") from None
        if total is not None and size != total:
            raise _Failed(f"truncated: {size} of {total} bytes")
        hexdigest = digest.hexdigest()
        _check(head, hexdigest, f)
    return dst, source, hexdigest


def _verified_digest(path: Path, f: WeightFile) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        head = stream.read(HEAD_SIZE)
        stream.seek(0)
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    _check(head, hexdigest, f)
    return hexdigest


def _check(head: bytes, hexdigest: str, f: WeightFile) -> None:
    if f.sha256 and not hexdigest.startswith(f.sha256.lower()):
        raise _Failed(f"sha256 {hexdigest[:16]}... does not match the published {f.sha256}")
    kind = file_kind(head)
    if kind is not None:
        raise _Failed(f"{kind}, not a checkpoint")


__all__ = ["cache_dir", "converted_path", "is_cached", "offline", "pull", "pretrained_file", "pretrained_preprocessing"]
