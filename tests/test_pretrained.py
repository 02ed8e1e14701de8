"""Pretrained weights by tag, with no internet: a loopback HTTP server serves generated checkpoints in each
layout, through VOVNET_MIRROR and through registry URLs pointed at it."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import randomize_norm_stats
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as st_save
from timm.models.vovnet import VovNet, model_cfgs

import vovnet
from vovnet.cli import main
from vovnet.deployment.export import vovnet_target
from vovnet.errors import DownloadError, UsageError
from vovnet.models.specs import MODEL_SPECS, VoVNetConfig
from vovnet.tasks.classification import checkpoint_preprocessing
from vovnet.weights import hub, pretrained
from vovnet.weights.checkpoint import META_KEY, load_checkpoint, read_checkpoint
from vovnet.weights.convert import SOURCES, convert_state_dict
from vovnet.weights.pretrained import PRETRAINED, WeightFile

TAG = "vovnet19_slim_dw.official_in1k"
FILE = "vovnet19_ese_slim_dw_detectron2.pth"


# ---- a loopback server ---------------------------------------------------------------------------
class Server:
    """Serves ``routes[path] = bytes`` (200) or ``("cut", bytes)`` (Content-Length of the whole, half the
    body, then the connection closes); anything else is 404. ``requests`` lists every path asked for."""

    def __init__(self):
        self.routes: dict[str, object] = {}
        self.requests: list[str] = []
        self.delay = 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                time.sleep(server.delay)
                cut = isinstance(route, tuple)
                body = route[1] if cut else route
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VOVNET_HOME", str(cache))
    monkeypatch.delenv("VOVNET_MIRROR", raising=False)
    monkeypatch.delenv("VOVNET_OFFLINE", raising=False)
    return cache


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(0)
    return randomize_norm_stats(vovnet.create_model("vovnet19_slim_dw", num_classes=0))


def _torch_bytes(state_dict: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def official_bytes(source_model):
    """An official-layout ImageNet backbone file, as vovnet-detectron2 publishes them (no classifier)."""
    return _torch_bytes(convert_state_dict(source_model.state_dict(), "vovnet", "official"))


def _point(monkeypatch, tag: str, *files: WeightFile, **changes) -> None:
    """Make ``tag``'s registry record download ``files`` (the test server's URLs)."""
    monkeypatch.setitem(PRETRAINED, tag, dataclasses.replace(PRETRAINED[tag], files=files, **changes))


def _cached_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and p.parent.name != ".locks") if cache.exists() else []


def _features(model, x):
    with torch.no_grad():
        return model.eval().forward_features(x)


# ---- the registry --------------------------------------------------------------------------------
def test_registry_records_are_consistent():
    files = [f.file for w in PRETRAINED.values() for f in w.files]
    assert len(files) == len(set(files)), "file names must be unique across the registry"
    for tag, w in PRETRAINED.items():
        assert w.tag == tag and w.model in MODEL_SPECS and w.layout in SOURCES
        assert w.files and all((f.urls or f.page) and all(u.startswith("https://") for u in f.urls) for f in w.files)
        assert all(f.sha256 is None or (len(f.sha256) >= 8 and int(f.sha256, 16) >= 0) for f in w.files)
        official_v2 = (tag.endswith("official_in1k") and "_v1" not in tag) or w.task == "detect" or "dd3d" in tag or "fcos3d" in tag
        assert w.preprocessing.channel_order == ("BGR" if official_v2 else "RGB")
        assert set(w.options) <= {f.name for f in dataclasses.fields(VoVNetConfig)}
    for model in {w.model for w in PRETRAINED.values()}:
        assert sum(w.default for w in PRETRAINED.values() if w.model == model) == 1, model
    # every official VoVNetV2 backbone of vovnet-detectron2, the V1 files, timm's three trained tags
    assert {w.model for w in PRETRAINED.values() if w.tag.endswith(".official_in1k")} == {
        "vovnet19_slim_dw", "vovnet19_slim", "vovnet19_dw", "vovnet19", "vovnet39", "vovnet57", "vovnet99", "vovnet39_v1", "vovnet57_v1"}
    top1 = {t: w.metric.top1 for t, w in PRETRAINED.items() if isinstance(w.metric, pretrained.Metric)}
    assert top1 == {"vovnet39_v1.official_in1k": 76.77, "vovnet57_v1.official_in1k": 77.73, "vovnet19_dw.timm_ra_in1k": 76.828,
                    "vovnet39.timm_ra_in1k": 79.312, "vovnet57.timm_ra4_e3600_r256_in1k": 82.46}
    assert PRETRAINED["vovnet39.timm_ra_in1k"].files[1] == WeightFile(
        "ese_vovnet39b-f912fe73.pth", ("https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/ese_vovnet39b-f912fe73.pth",), "f912fe73")
    assert PRETRAINED["vovnet39.official_in1k"].urls[:2] == [
        "https://www.dropbox.com/s/q98pypf96rhtd8y/vovnet39_ese_detectron2.pth?dl=1", "https://dl.dropbox.com/s/q98pypf96rhtd8y/vovnet39_ese_detectron2.pth"]
    assert PRETRAINED["vovnet57.timm_ra4_e3600_r256_in1k"].urls == [
        "https://huggingface.co/timm/ese_vovnet57b.ra4_e3600_r256_in1k/resolve/main/model.safetensors"]


def test_centermask2_detector_tags():
    """The seven COCO detectors of centermask2's README, tagged ``<detector>_<backbone>.coco``."""
    detectors = {t: w for t, w in PRETRAINED.items() if w.task == "detect" and w.detector.startswith("centermask2")}
    assert {t: (w.model, w.detector, w.metric.mask_ap, w.metric.box_ap) for t, w in detectors.items()} == {
        "centermask2_lite_vovnet19_slim_dw.coco": ("vovnet19_slim_dw", "centermask2_lite", 27.1, 29.5),
        "centermask2_lite_vovnet19_slim.coco": ("vovnet19_slim", "centermask2_lite", 29.8, 32.5),
        "centermask2_lite_vovnet19.coco": ("vovnet19", "centermask2_lite", 32.8, 35.9),
        "centermask2_lite_vovnet39.coco": ("vovnet39", "centermask2_lite", 36.7, 40.9),
        "centermask2_vovnet39.coco": ("vovnet39", "centermask2", 39.7, 44.2),
        "centermask2_vovnet57.coco": ("vovnet57", "centermask2", 40.5, 45.1),
        "centermask2_vovnet99.coco": ("vovnet99", "centermask2", 41.4, 46.0),
    }
    assert PRETRAINED["centermask2_vovnet39.coco"].urls == ["https://dl.dropbox.com/s/tczecsdxt10uai5/centermask2-V-39-eSE-FPN-ms-3x.pth"]
    assert all(w.license == "CC-BY-NC-4.0" and w.num_classes == 80 and not w.default for w in detectors.values())
    with pytest.raises(UsageError, match="whole centermask2 detector; load it with vovnet.load_detector"):
        vovnet.create_model("vovnet39", pretrained="centermask2_vovnet39.coco")
    with pytest.raises(UsageError, match="not a backbone"):  # before any download
        hub.pull("centermask2_vovnet39.coco")


@pytest.mark.slow
def test_load_takes_any_checkpoint_or_tag_as_a_model_of_its_kind(server, home, monkeypatch, official_bytes, source_model, tmp_path):
    server.routes["/w/" + FILE] = official_bytes
    _point(monkeypatch, TAG, WeightFile(FILE, (server.url + "/w/" + FILE,)))
    x = torch.randn(1, 3, 64, 64)
    for by_tag in (vovnet.load(TAG), vovnet.load_checkpoint(TAG)):
        assert isinstance(by_tag, vovnet.VoVNet) and not by_tag.training
        assert torch.equal(_features(by_tag, x), _features(source_model, x))
    assert server.requests == ["/w/" + FILE]  # pulled once, then the cache
    detector = vovnet.create_detector("fcos", "vovnet19_slim_dw", ["a"], image_size=64)
    segmenter = vovnet.create_segmenter("fpn_semantic", "vovnet19_slim_dw", ["bg", "a"], fpn_channels=16, head_channels=16)
    files = {
        "d": vovnet.save_detector(detector, tmp_path / "d.safetensors"),
        "s": vovnet.save_segmenter(segmenter, tmp_path / "s.safetensors"),
        "c": vovnet.save_checkpoint(source_model, tmp_path / "c.safetensors"),
    }
    for key, model in (("d", detector), ("s", segmenter), ("c", source_model)):
        loaded = vovnet.load(files[key])
        assert type(loaded) is type(model) and not loaded.training
        as_json = [json.loads(json.dumps(m.config.to_dict(), default=list)) for m in (loaded, model)]  # JSON-able, the same
        assert as_json[0] == as_json[1] and loaded.preprocessing.keys() >= {"mean", "std"}
    assert vovnet.load(files["d"]).class_names == ("a",) and vovnet.load(files["s"]).class_names == ("bg", "a")
    foreign = tmp_path / "official.pth"
    foreign.write_bytes(official_bytes)
    with pytest.raises(vovnet.CheckpointError, match="official.pth: not one of our checkpoints"):
        vovnet.load(foreign)
    with pytest.raises(UsageError, match="centermask2_vovnet39.coco is a whole centermask2 detector"):
        vovnet.load_checkpoint("centermask2_vovnet39.coco")


def test_pull_converts_a_centermask2_detector_as_by_hand(server, home, monkeypatch, tmp_path):
    """A generated Lite V-19-slim-dw centermask2 file: ``vovnet pull`` caches the same detector checkpoint as
    ``vovnet convert --from official`` of the same file, and ``load_detector(tag)`` gives the same outputs."""
    from test_centermask_official import official_checkpoint

    tag, name = "centermask2_lite_vovnet19_slim_dw.coco", "centermask-lite-V-19-eSE-slim-dw-FPN-ms-4x.pth"
    body = _torch_bytes({"model": official_checkpoint("vovnet19_slim_dw", True, num_classes=80), "iteration": 1})
    server.routes["/d/" + name] = body
    _point(monkeypatch, tag, WeightFile(name, (server.url + "/d/" + name,)))
    assert main(["pull", "--quiet", tag]) == 0
    path = hub.converted_path(tag)
    assert server.requests == ["/d/" + name] and hub.is_cached(tag)
    (tmp_path / name).write_bytes(body)
    assert main(["convert", "--from", "official", str(tmp_path / name), str(tmp_path / "hand.safetensors")]) == 0
    (pulled, meta), (hand, hand_meta) = read_checkpoint(path), read_checkpoint(tmp_path / "hand.safetensors")
    assert pulled.keys() == hand.keys() and all(torch.equal(pulled[k], hand[k]) for k in hand)
    assert meta["detector"] == hand_meta["detector"] and meta["task"] == "detect" and meta["pretrained_tag"] == tag
    assert meta["source_sha256"] == hashlib.sha256(body).hexdigest() and meta["license"] == "CC-BY-NC-4.0"
    by_tag, by_hand = vovnet.load_detector(tag, image_size=64), vovnet.load_detector(tmp_path / "hand.safetensors", image_size=64)
    assert server.requests == ["/d/" + name]  # load_detector(tag) found the cache
    torch.manual_seed(0)
    image = torch.rand(3, 60, 80)
    with torch.no_grad():
        ours, theirs = by_tag([image])[0], by_hand([image])[0]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours) and len(ours["scores"]) > 0
    assert by_tag.config.class_names[0] == "person"


def test_timm_tags_options_build_timms_network():
    """The timm tags' dialect options give a network whose keys and shapes are exactly timm's."""
    for tag in ("vovnet39.timm_ra_in1k", "vovnet19_dw.timm_ra_in1k"):
        w = PRETRAINED[tag]
        timm_name = MODEL_SPECS[w.model].timm_name
        ours = vovnet.create_model(w.model, **w.options).state_dict()
        theirs = convert_state_dict(VovNet(model_cfgs[timm_name]).state_dict(), "timm", "vovnet")
        assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}, tag


def test_list_pretrained_and_unknown_tags():
    assert vovnet.list_pretrained("vovnet39.*") == ["vovnet39.official_in1k", "vovnet39.timm_ra_in1k"]
    assert vovnet.list_pretrained("vovnet39.")[2:] == [  # the detectors too
        "centermask2_lite_vovnet39.coco", "centermask2_vovnet39.coco", "faster_rcnn_vovnet39.coco", "mask_rcnn_vovnet39.coco",
        "panoptic_fpn_vovnet39.coco"]
    assert vovnet.list_pretrained("*timm*") == ["vovnet19_dw.timm_ra_in1k", "vovnet39.timm_ra_in1k", "vovnet57.timm_ra4_e3600_r256_in1k"]
    assert len(vovnet.list_pretrained()) == len(PRETRAINED)
    with pytest.raises(UsageError, match="unknown pretrained tag 'vovnet39.timm_ra'; did you mean vovnet39.timm_ra_in1k"):
        vovnet.create_model("vovnet39", pretrained="vovnet39.timm_ra")
    with pytest.raises(UsageError, match="holds vovnet39 weights, not vovnet57"):
        vovnet.create_model("vovnet57", pretrained="vovnet39.official_in1k")
    with pytest.raises(UsageError, match="no published weights for vovnet27_slim"):
        vovnet.create_model("vovnet27_slim", pretrained=True)
    with pytest.raises(UsageError, match=r"needs \{'ese': 'last'\}; drop ese='every'"):
        vovnet.create_model("vovnet39", ese="every", pretrained="vovnet39.timm_ra_in1k")


# ---- downloading ---------------------------------------------------------------------------------
def test_first_download_then_cache_hit_without_a_request(server, home, monkeypatch, official_bytes, source_model):
    server.routes["/w/" + FILE] = official_bytes
    _point(monkeypatch, TAG, WeightFile(FILE, (server.url + "/w/" + FILE,)))
    path = hub.pull(TAG, progress=False)
    assert path == home / f"{TAG}.safetensors" and (home / FILE).read_bytes() == official_bytes
    assert server.requests == ["/w/" + FILE] and _cached_files(home) == sorted([FILE, path.name])
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
    assert meta["pretrained_tag"] == TAG and meta["source_url"] == server.url + "/w/" + FILE
    assert meta["source_sha256"] == hashlib.sha256(official_bytes).hexdigest() and meta["converted_from"] == "official"
    assert meta["preprocessing"]["channel_order"] == "BGR" and meta["preprocessing"]["scale"] == 255.0
    # second pull, create_model by tag and by pretrained=True: the cache, no new request
    assert hub.pull(TAG) == path and hub.is_cached(TAG)
    model = vovnet.create_model("vovnet19_slim_dw", pretrained=TAG, num_classes=7)
    default = vovnet.create_model("vovnet19_slim_dw", pretrained=True, num_classes=0)
    assert server.requests == ["/w/" + FILE]
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_features(model, x), _features(source_model, x)) and torch.equal(_features(default, x), _features(source_model, x))
    assert model.preprocessing["channel_order"] == "BGR" and model.preprocessing["mean"] == (103.53, 116.28, 123.675)
    # export records the input the weights expect next to the graph
    assert vovnet_target(load_checkpoint(path)).metadata["preprocessing"]["channel_order"] == "BGR"


def test_converted_model_equals_converting_the_same_file_by_hand(server, home, monkeypatch, tmp_path, official_bytes):
    server.routes["/w/" + FILE] = official_bytes
    _point(monkeypatch, TAG, WeightFile(FILE, (server.url + "/w/" + FILE,)))
    (tmp_path / FILE).write_bytes(official_bytes)
    assert main(["convert", "--from", "official", str(tmp_path / FILE), str(tmp_path / "hand.safetensors")]) == 0
    by_hand = vovnet.create_model("vovnet19_slim_dw", num_classes=10, pretrained=str(tmp_path / "hand.safetensors"))
    torch.manual_seed(1)
    by_tag = vovnet.create_model("vovnet19_slim_dw", num_classes=10, pretrained=TAG)
    by_hand.head.load_state_dict(by_tag.head.state_dict())  # the fresh heads differ; the backbones must not
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        assert torch.equal(by_tag.eval()(x), by_hand.eval()(x))
    hand, tagged = load_checkpoint(tmp_path / "hand.safetensors"), load_checkpoint(hub.converted_path(TAG))
    assert hand.config == tagged.config and hand.preprocessing == tagged.preprocessing


def test_timm_layout_with_dialect_options_and_a_hash_prefix(server, home, monkeypatch):
    """A timm-layout file behind a torch.hub-style hash prefix; the tag's options reach the built model."""
    torch.manual_seed(0)
    reference = randomize_norm_stats(VovNet(model_cfgs["ese_vovnet19b_slim_dw"], num_classes=5))
    body = _torch_bytes(reference.state_dict())
    prefix = hashlib.sha256(body).hexdigest()[:8]
    name = f"ese_vovnet19b_slim_dw-{prefix}.pth"
    server.routes["/r/" + name] = body
    tag = "vovnet19_slim_dw.timm_test"
    record = dataclasses.replace(PRETRAINED[TAG], tag=tag, layout="timm", files=(WeightFile(name, (server.url + "/r/" + name,), prefix),),
                                 preprocessing=pretrained.TIMM_RA_INPUT, options={"shortcut": "none"}, num_classes=5, default=False)
    monkeypatch.setitem(PRETRAINED, tag, record)
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=5, pretrained=tag).eval()
    assert model.config.shortcut == "none" and model.preprocessing["interpolation"] == "bicubic"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5, rtol=1e-4)


def test_hash_mismatch_is_refused_and_nothing_is_cached(server, home, monkeypatch, official_bytes):
    url = server.url + "/w/" + FILE
    server.routes["/w/" + FILE] = official_bytes
    _point(monkeypatch, TAG, WeightFile(FILE, (url,), sha256="deadbeef"))
    with pytest.raises(DownloadError) as e:
        hub.pull(TAG, progress=False)
    message = str(e.value)
    assert "\n" not in message and TAG in message and url in message and "does not match the published deadbeef" in message
    assert _cached_files(home) == []


def test_404_then_a_working_url_and_the_mirror_first(server, home, monkeypatch, official_bytes):
    server.routes["/good/" + FILE] = official_bytes
    _point(monkeypatch, TAG, WeightFile(FILE, (server.url + "/dead/" + FILE, server.url + "/good/" + FILE)))
    monkeypatch.setenv("VOVNET_MIRROR", server.url + "/mirror")
    hub.pull(TAG, progress=False)
    assert server.requests == ["/mirror/" + FILE, "/dead/" + FILE, "/good/" + FILE]


def test_mirror_url_prefix_and_local_folder(server, home, monkeypatch, tmp_path, official_bytes):
    server.routes["/mirror/" + FILE] = official_bytes
    _point(monkeypatch, TAG, WeightFile(FILE, (server.url + "/unreachable/" + FILE,)))
    monkeypatch.setenv("VOVNET_MIRROR", server.url + "/mirror/")
    hub.pull(TAG, progress=False)
    assert server.requests == ["/mirror/" + FILE]
    # an air-gapped site: a local folder, with the network forbidden
    monkeypatch.setenv("VOVNET_HOME", str(tmp_path / "other_cache"))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / FILE).write_bytes(official_bytes)
    monkeypatch.setenv("VOVNET_MIRROR", str(tmp_path / "site"))
    monkeypatch.setenv("VOVNET_OFFLINE", "1")
    assert hub.pull(TAG, progress=False) == tmp_path / "other_cache" / f"{TAG}.safetensors"
    assert server.requests == ["/mirror/" + FILE]


def test_a_connection_cut_mid_file(server, home, monkeypatch, official_bytes):
    cut, good = server.url + "/cut/" + FILE, server.url + "/good/" + FILE
    server.routes["/cut/" + FILE] = ("cut", official_bytes)
    _point(monkeypatch, TAG, WeightFile(FILE, (cut,)))
    with pytest.raises(DownloadError) as e:
        hub.pull(TAG, progress=False)
    half, total = len(official_bytes) // 2, len(official_bytes)
    assert f"{cut}: truncated: {half} of {total} bytes" in str(e.value) or f"{cut}: connection lost after {half} of {total}" in str(e.value)
    assert _cached_files(home) == []
    server.routes["/good/" + FILE] = official_bytes
    _point(monkeypatch, TAG, WeightFile(FILE, (cut, good)))
    hub.pull(TAG, progress=False)
    assert (home / FILE).read_bytes() == official_bytes


def test_a_web_page_instead_of_the_file_is_refused(server, home, monkeypatch):
    url = server.url + "/page/" + FILE
    server.routes["/page/" + FILE] = b"<!DOCTYPE html><html>403 Forbidden</html>"
    _point(monkeypatch, TAG, WeightFile(FILE, (url,)))
    with pytest.raises(DownloadError, match="not a checkpoint"):
        hub.pull(TAG, progress=False)
    assert _cached_files(home) == []


def test_offline_touches_no_network_and_says_what_to_do(server, home, monkeypatch):
    url = server.url + "/w/" + FILE
    _point(monkeypatch, TAG, WeightFile(FILE, (url,)))
    monkeypatch.setenv("VOVNET_OFFLINE", "1")
    monkeypatch.setenv("VOVNET_MIRROR", server.url + "/mirror")  # a URL mirror is network too
    with pytest.raises(DownloadError) as e:
        vovnet.create_model("vovnet19_slim_dw", pretrained=True)
    message = str(e.value)
    assert server.requests == [] and "\n" not in message
    assert message.startswith(f"{TAG}: no usable copy of {FILE}") and f"VOVNET_OFFLINE=1, so {server.url}/mirror/{FILE}, {url} not tried" in message
    assert f"put {FILE} (from {url}) into {home}" in message
    assert f"vovnet convert --from official {FILE} OUT.safetensors" in message and "VOVNET_MIRROR" in message


@pytest.mark.slow  # two processes
def test_two_processes_pulling_at_once_download_once(server, home, tmp_path, official_bytes):
    """Both processes wait at a barrier file, then pull through VOVNET_MIRROR; the server is slow."""
    server.routes["/mirror/" + FILE] = official_bytes
    server.delay = 1.0
    code = (
        "import os, sys, time; from pathlib import Path; from vovnet.weights.hub import pull\n"
        "Path(sys.argv[1]).touch()\n"
        "while not Path(sys.argv[2]).exists(): time.sleep(0.01)\n"
        "print(pull(sys.argv[3], progress=False))\n"
    )
    env = {**os.environ, "VOVNET_HOME": str(home), "VOVNET_MIRROR": server.url + "/mirror", "VOVNET_OFFLINE": ""}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"ready{i}"), str(go), TAG], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert [o.strip() for o, _ in outputs] == [str(home / f"{TAG}.safetensors")] * 2
    assert server.requests == ["/mirror/" + FILE]


def test_timms_hugging_face_cache_is_reused_without_a_network_call(server, home, monkeypatch, tmp_path):
    """A file timm already fetched with huggingface_hub is found in the HF cache, offline."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    torch.manual_seed(0)
    reference = randomize_norm_stats(VovNet(model_cfgs["ese_vovnet19b_slim_dw"], num_classes=3))
    body = st_save({k: v.contiguous() for k, v in reference.state_dict().items()})
    snapshot = tmp_path / "hf" / "models--timm--ese_vovnet19b_slim_dw.test_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(body)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    url = "https://huggingface.co/timm/ese_vovnet19b_slim_dw.test_in1k/resolve/main/model.safetensors"
    tag = "vovnet19_slim_dw.timm_test_in1k"
    monkeypatch.setitem(PRETRAINED, tag, dataclasses.replace(
        PRETRAINED[TAG], tag=tag, layout="timm", files=(WeightFile("ese_vovnet19b_slim_dw.test_in1k.safetensors", (url,)),),
        preprocessing=pretrained.TIMM_RA_INPUT, num_classes=3, default=False))
    monkeypatch.setenv("VOVNET_OFFLINE", "1")
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=3, pretrained=tag).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5, rtol=1e-4)
    _, meta = read_checkpoint(hub.converted_path(tag))
    assert meta["source_url"] == url and meta["source_sha256"] == hashlib.sha256(body).hexdigest()
    assert _cached_files(home) == [f"{tag}.safetensors"]  # converted beside nothing: the original stays in HF's cache


# ---- preprocessing follows the weights -----------------------------------------------------------
def test_pretrained_transforms_follow_the_weights(tmp_path):
    image = Image.new("RGB", (300, 260), (10, 20, 30))
    official = vovnet.pretrained_transforms(TAG)(image)  # no download: the tag's record says it
    assert official.shape == (3, 224, 224)
    assert torch.allclose(official[:, 100, 100], torch.tensor([30 - 103.53, 20 - 116.28, 10 - 123.675]), atol=1e-3)
    timm57 = vovnet.pretrained_transforms("vovnet57.timm_ra4_e3600_r256_in1k")
    assert timm57(image).shape == (3, 256, 256)
    assert [type(t).__name__ for t in timm57.transforms][:3] == ["ToImage", "Resize", "CenterCrop"]
    assert timm57.transforms[1].size == [round(256 / 0.95)] and timm57.transforms[1].interpolation.value == "bicubic"
    assert torch.allclose(timm57(image)[:, 5, 5], torch.tensor([10, 20, 30]) / 255 * 2 - 1, atol=1e-4)
    # a checkpoint carries its own
    model = vovnet.create_model("vovnet19_slim_dw", num_classes=2)
    model.preprocessing = pretrained.DETECTRON2_INPUT.to_dict()
    vovnet.save_checkpoint(model, tmp_path / "m.safetensors")
    assert torch.equal(vovnet.pretrained_transforms(str(tmp_path / "m.safetensors"))(image), official)


def test_train_from_a_tag_feeds_bgr_and_records_it(server, home, monkeypatch, tmp_path, official_bytes):
    server.routes["/mirror/" + FILE] = official_bytes
    monkeypatch.setenv("VOVNET_MIRROR", server.url + "/mirror")
    out = tmp_path / "run"
    assert main(["train", "--pretrained", TAG, "--epochs", "1", "--limit-train", "32", "--limit-val", "16",
                 "--batch-size", "16", "--quiet", "--out", str(out)]) == 0
    _, meta = read_checkpoint(out / "last.safetensors")
    assert meta["preprocessing"]["channel_order"] == "BGR"
    assert meta["preprocessing"]["mean"] == pytest.approx([103.53 / 255, 116.28 / 255, 123.675 / 255])
    assert checkpoint_preprocessing(meta).channel_order == "BGR"


# ---- the CLI -------------------------------------------------------------------------------------
def test_cli_weights_json(home, capsys):
    assert main(["weights", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["tag"] for r in rows] == list(PRETRAINED)
    for r in rows:
        assert {"tag", "model", "source", "file", "urls", "sha256", "metric", "cached", "license"} <= set(r)
        assert r["cached"] is False and (r["urls"] or r["files"][0]["page"])  # a by-hand file: its page
    by_tag = {r["tag"]: r for r in rows}
    assert by_tag["vovnet39.timm_ra_in1k"]["sha256"] is None
    assert by_tag["vovnet39.timm_ra_in1k"]["files"][1]["sha256"] == "f912fe73"
    assert by_tag["vovnet57.timm_ra4_e3600_r256_in1k"]["metric"]["top1"] == 82.46
    assert main(["weights", "timm"]) == 0 and "vovnet39.timm_ra_in1k" in capsys.readouterr().out


def test_cli_pull_exit_codes(server, home, monkeypatch, capsys, official_bytes):
    server.routes["/mirror/" + FILE] = official_bytes
    monkeypatch.setenv("VOVNET_MIRROR", server.url + "/mirror")
    assert main(["pull", "--quiet", TAG]) == 0
    assert capsys.readouterr().out.strip() == f"{TAG}: {home / (TAG + '.safetensors')}"
    assert main(["weights", "--json", TAG]) == 0 and json.loads(capsys.readouterr().out)[0]["cached"] is True
    assert main(["pull", "vovnet39.nope"]) == 2
    assert "unknown pretrained tag 'vovnet39.nope'" in capsys.readouterr().err
    monkeypatch.setenv("VOVNET_OFFLINE", "1")
    assert main(["pull", "vovnet19_slim.official_in1k"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vovnet pull: error: vovnet19_slim.official_in1k: no usable copy")
    with pytest.raises(SystemExit) as e:
        main(["pull"])
    assert e.value.code == 2



@pytest.mark.slow
def test_dense_tasks_build_the_tags_dialect(tmp_path, monkeypatch):
    """A timm tag (eSE on the last block only) loads into detection and segmentation backbones, which are
    built with the tag's options and keep them in their checkpoints."""
    from vovnet import create_detector, create_segmenter, load_detector, save_detector

    tag = "vovnet39.timm_ra_in1k"
    assert vovnet.weights.pretrained.get_pretrained(tag).options == {"ese": "last"}
    source = vovnet.create_model("vovnet39", num_classes=0, ese="last")
    path = vovnet.save_checkpoint(source, tmp_path / "last_ese.safetensors")
    # The download itself is tested above; here the tag's file is this one.
    monkeypatch.setattr("vovnet.factory.pretrained_file", lambda p: path)
    detector = create_detector("fcos", "vovnet39", ["a"], image_size=64, pretrained=tag)
    body = detector.backbone.body.state_dict()
    assert detector.backbone.body.config.ese == "last"
    assert all(torch.equal(body[k], v) for k, v in source.state_dict().items() if k in body)
    assert sum(k in body for k in source.state_dict()) > 100
    reloaded = load_detector(save_detector(detector, tmp_path / "d.safetensors"))
    assert reloaded.backbone.body.config.ese == "last"
    segmenter = create_segmenter("fpn_semantic", "vovnet39", ["bg", "a"], pretrained=tag)
    assert segmenter.backbone.body.config.ese == "last"
    with pytest.raises(vovnet.CheckpointError):  # without the tag's options the same file does not fit
        create_detector("fcos", "vovnet39", ["a"], image_size=64, pretrained=str(path))
