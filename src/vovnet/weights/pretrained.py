"""Every published VoVNet checkpoint as data: one :class:`PretrainedWeights` record per tag.

A tag is ``<model>.<weights>`` (``vovnet39.official_in1k``, ``vovnet39.timm_ra_in1k``). A record says
which registered model the weights fit and with which dialect options, where each copy of the file is
published and how to check it, what input the weights were trained on, what the source reports and
under which license. Downloading, verifying and converting is :mod:`vovnet.weights.hub`'s business;
nothing here touches the network.

A whole detector's tag is ``<detector>_<model>.<dataset>`` (``centermask2_lite_vovnet19_slim_dw.coco``,
``centermask2_vovnet99.coco``, ``faster_rcnn_lite_vovnet19_dw.coco``, ``mask_rcnn_vovnet39.coco``,
``panoptic_fpn_vovnet57.coco``): ``model`` is still its backbone.

Sources (read off the repositories; the README's "Pretrained weights" section links them):
vovnet-detectron2 README and ``configs/*.yaml`` (official VoVNetV2 ImageNet backbones), CenterMask
``configs/centermask/*.yaml`` (the same backbones as maskrcnn-benchmark state dicts), VoVNet.pytorch
README and ``models_vovnet/vovnet.py`` (V1), timm ``timm/models/vovnet.py`` ``default_cfgs`` and
``results/results-imagenet.csv`` (timm's weights), centermask2 README "Results on COCO val" and
LICENSE (CC BY-NC 4.0; the COCO detectors), vovnet-detectron2 README "Results on MS-COCO in Detectron2" and
LICENSE (CC BY-NC 4.0; its Faster / Mask R-CNN and Panoptic FPN models).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..models.input_format import CHANNEL_ORDERS
from ..models.vovnet import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class ImageInput:
    """What the weights expect to see: how an image becomes their input tensor.

    Pixels are taken in ``channel_order`` with values in ``[0, scale]``, then ``(x - mean) / std`` (both
    on that scale). Evaluation resizes the short side to ``input_size[-1] / crop_pct`` with
    ``interpolation`` and centre-crops ``input_size``, as timm's ``pretrained_cfg`` does.
    """

    channel_order: str = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order={self.channel_order!r} is not one of {', '.join(CHANNEL_ORDERS)}")

    def replace(self, **changes: Any) -> "ImageInput":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The ``model.preprocessing`` / checkpoint-metadata form of this record."""
        return dict(channel_order=self.channel_order, scale=self.scale, mean=tuple(self.mean), std=tuple(self.std),
                    input_size=tuple(self.input_size), crop_pct=self.crop_pct, interpolation=self.interpolation)


# detectron2's input (cfg.INPUT.FORMAT "BGR", MODEL.PIXEL_MEAN / PIXEL_STD), which every official
# VoVNetV2 backbone and detector was trained with.
DETECTRON2_INPUT = ImageInput("BGR", 255.0, (103.530, 116.280, 123.675), (1.0, 1.0, 1.0))
# pytorch/examples/imagenet, which VoVNet.pytorch's main.py follows: Resize(256), CenterCrop(224).
TORCHVISION_INPUT = ImageInput()
TIMM_RA_INPUT = ImageInput(interpolation="bicubic")
TIMM_RA4_R256_INPUT = ImageInput(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(3, 256, 256), crop_pct=0.95,
                                 interpolation="bicubic")


@dataclass(frozen=True)
class WeightFile:
    """One published copy of the weights.

    ``file`` names it in the cache and under ``VOVNET_MIRROR`` (unique across the registry); ``urls`` are
    tried in order; ``sha256`` is the full digest or a prefix of it (torch.hub's convention in timm's
    release file names), None where the source publishes none. A file with no ``urls`` sits behind a host
    that does not serve it by URL (Google Drive's confirmation page): ``page`` is where to get it by hand.
    """

    file: str
    urls: tuple[str, ...]
    sha256: str | None = None
    page: str | None = None  # where a person downloads it when no URL serves it (a Google Drive file or folder)


@dataclass(frozen=True)
class Metric:
    """A figure the source reports for these weights, and where it reports it."""

    top1: float
    img_size: int
    reported: str
    note: str = ""


@dataclass(frozen=True)
class CocoMetric:
    """A detector's COCO val2017 figures as the source reports them (single-scale test, no TTA): mask AP (None for
    a box detector), box AP and, for a panoptic model, panoptic quality."""

    mask_ap: float | None
    box_ap: float
    img_size: int  # the test short side
    reported: str
    pq: float | None = None
    note: str = ""


@dataclass(frozen=True)
class PretrainedWeights:
    """One tag: weights for ``model`` (the part of the tag before the dot) built with ``options``.

    ``files``: the copies, the primary first, then mirrors holding the same network's weights.
    ``layout``: their state-dict layout (:data:`vovnet.weights.convert.SOURCES`). ``num_classes``: the
    classifier the file holds (0 = backbone only). ``default``: ``create_model(model, pretrained=True)``
    takes this tag. ``detector``: set for a whole detector (``centermask2``, ``centermask2_lite``, ``faster_rcnn``,
    ``faster_rcnn_lite``, ``mask_rcnn``, ``mask_rcnn_lite``, ``panoptic_fpn``), whose
    tag is ``<detector>_<model>.<dataset>`` and which converts to a detector checkpoint
    (``vovnet.load_detector(tag)``), not a backbone. ``reference`` and ``caveats``: where the facts were read
    and what to know before using the weights.
    """

    tag: str
    layout: str
    files: tuple[WeightFile, ...]
    preprocessing: ImageInput
    license: str
    metric: Metric | CocoMetric | None = None
    options: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1000
    default: bool = False
    detector: str | None = None
    reference: str = ""  # where the file, its training and its input are described, when no metric says so
    caveats: str = ""  # what a user must know before using them (data they saw, how they were trained)

    @property
    def model(self) -> str:
        """The registered VoVNet the weights fit (a detector's backbone)."""
        prefix = self.tag.split(".", 1)[0]
        return prefix.removeprefix(f"{self.detector}_") if self.detector else prefix

    @property
    def task(self) -> str:
        return "detect" if self.detector else "classify"

    @property
    def file(self) -> str:
        return self.files[0].file

    @property
    def urls(self) -> list[str]:
        return [url for f in self.files for url in f.urls]

    @property
    def sha256(self) -> str | None:
        return self.files[0].sha256

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``vovnet weights --json`` prints (without the cache state)."""
        return dict(
            tag=self.tag, task=self.task, detector=self.detector, model=self.model, options=dict(self.options),
            source=self.layout, file=self.file,
            urls=self.urls, sha256=self.sha256, metric=vars(self.metric) if self.metric else None,
            license=self.license, num_classes=self.num_classes, default=self.default,
            preprocessing={k: list(v) if isinstance(v, tuple) else v for k, v in self.preprocessing.to_dict().items()},
            files=[dict(file=f.file, urls=list(f.urls), sha256=f.sha256, page=f.page) for f in self.files],
            reference=self.reference, caveats=self.caveats,
        )


def _dropbox(share: str, name: str, *, query: str = "?dl=1") -> str:
    return f"https://www.dropbox.com/s/{share}/{name}{query}"


def _dropbox_dl(share: str, name: str, *, query: str = "") -> str:
    return f"https://dl.dropbox.com/s/{share}/{name}{query}"


def _official_v2(model: str, share: str, name: str, mirror: tuple[str, str] | None = None) -> PretrainedWeights:
    """An official ImageNet VoVNetV2 backbone of vovnet-detectron2: the configs' ``MODEL.WEIGHTS`` link
    (www.dropbox.com, ``?dl=1``), then the same share on Dropbox's download host (the README's form for
    V-19..V-99), then CenterMask's maskrcnn-benchmark copy of the same network where one exists."""
    files = [WeightFile(name, (_dropbox(share, name), _dropbox_dl(share, name)))]
    if mirror is not None:
        files.append(WeightFile(mirror[1], (_dropbox_dl(*mirror, query="?dl=1"),)))
    return PretrainedWeights(f"{model}.official_in1k", "official", tuple(files), DETECTRON2_INPUT, "CC-BY-NC-4.0",
                             num_classes=0, default=model != "vovnet19_dw")


_TIMM_RESULTS = "https://github.com/huggingface/pytorch-image-models/blob/main/results/results-imagenet.csv"
_TIMM_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_V1_RESULTS = "https://github.com/stigma0617/VoVNet.pytorch#imagenet-results"


def _timm(model: str, timm_tag: str, preprocessing: ImageInput, metric: Metric, release: tuple[str, str] | None = None,
          **options) -> PretrainedWeights:
    """timm's weights on the Hugging Face hub, then its older GitHub release file (hash prefix in the name)."""
    files = [WeightFile(f"{timm_tag}.safetensors", (f"https://huggingface.co/timm/{timm_tag}/resolve/main/model.safetensors",))]
    if release is not None:
        files.append(WeightFile(release[0], (_TIMM_RELEASE + release[0],), sha256=release[1]))
    tag = f"{model}.timm_{timm_tag.split('.', 1)[1]}"
    return PretrainedWeights(tag, "timm", tuple(files), preprocessing, "Apache-2.0", metric, options,
                             default=model == "vovnet19_dw")


def _v1(model: str, share: str, name: str, error: float) -> PretrainedWeights:
    # VoVNet.pytorch builds blocks 2..n of a stage with identity=True: V1 with identity shortcuts,
    # which the tensor shapes cannot show (timm's vovnet39a/57a have none).
    metric = Metric(round(100 - error, 2), 224, _V1_RESULTS, f"reported as top-1 error {error} %")
    files = (WeightFile(name, (_dropbox_dl(share, name, query="?dl=1"),)),)
    return PretrainedWeights(f"{model}.official_in1k", "official", files, TORCHVISION_INPUT,
                             "unspecified (VoVNet.pytorch has no license file)", metric, {"shortcut": "identity"}, default=True)


_CENTERMASK2_RESULTS = "https://github.com/youngwanLEE/centermask2#results-on-coco-val"


def _centermask2(model: str, share: str, name: str, mask_ap: float, box_ap: float, *, lite: bool) -> PretrainedWeights:
    """A centermask2 COCO detector (the README's model link): tag ``centermask2[_lite]_<model>.coco``."""
    detector = "centermask2_lite" if lite else "centermask2"
    metric = CocoMetric(mask_ap, box_ap, 600 if lite else 800, _CENTERMASK2_RESULTS)
    return PretrainedWeights(f"{detector}_{model}.coco", "official", (WeightFile(name, (_dropbox_dl(share, name),)),),
                             DETECTRON2_INPUT, "CC-BY-NC-4.0", metric, num_classes=80, detector=detector)


_D2_RESULTS = "https://github.com/youngwanLEE/vovnet-detectron2#results-on-ms-coco-in-detectron2"
_D2_NOTE = "no checksum published (the README links Dropbox files only); metrics JSON beside each in the README"


def _detectron2(detector: str, model: str, url: str, box_ap: float, mask_ap: float | None = None, pq: float | None = None) -> PretrainedWeights:
    """A vovnet-detectron2 COCO model (the README's model link, as given): tag ``<detector>_<model>.coco`` with
    ``detector`` one of ``faster_rcnn``, ``faster_rcnn_lite`` (FPNLite), ``mask_rcnn``, ``mask_rcnn_lite``,
    ``panoptic_fpn``."""
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    metric = CocoMetric(mask_ap, box_ap, 800, _D2_RESULTS, pq, _D2_NOTE)
    return PretrainedWeights(f"{detector}_{model}.coco", "official", (WeightFile(name, (url,)),), DETECTRON2_INPUT,
                             "CC-BY-NC-4.0", metric, num_classes=80, detector=detector)


_WWW, _DL = "https://www.dropbox.com/s/", "https://dl.dropbox.com/s/"

# DD3D's VoVNetV2-99, the image backbone of DETR3D, PETR / StreamPETR, BEVFormer, SparseBEV, MapTR, GeMap, Far3D and
# BEVDepth: DD3D README "Pre-trained DD3D models" and configs/meta_arch/dd3d.yaml (BGR, detectron2's means, DD3D's
# std); PETR README "Pretrained weights" and configs/petr/petr_vovnet_gridmask_p4_800x320.py (load_from, img_norm_cfg
# with to_rgb=False, 800x320); DETR3D README "Train" (the Google Drive folder) and its trainval config's load_from.
DD3D_INPUT = ImageInput("BGR", 255.0, (103.530, 116.280, 123.675), (57.375, 57.120, 58.395), input_size=(3, 320, 800),
                        crop_pct=1.0)
_DD3D_README = "https://github.com/TRI-ML/dd3d#pre-trained-dd3d-models"
_PETR_README = "https://github.com/megvii-research/PETR#preparation"
_DRIVE = "Google Drive, which serves large files through a confirmation page rather than by URL"


def _dd3d_v99(name: str, file: WeightFile, license: str, reference: str, caveats: str) -> PretrainedWeights:
    """A V2-99 of DD3D's lineage: its body read out of the whole detector's file (official keys under a prefix)."""
    return PretrainedWeights(f"vovnet99.{name}", "official", (file,), DD3D_INPUT, license, num_classes=0,
                             reference=reference, caveats=caveats)


PRETRAINED: dict[str, PretrainedWeights] = {
    w.tag: w
    for w in (
        _official_v2("vovnet19_slim_dw", "f3s7ospitqoals1", "vovnet19_ese_slim_dw_detectron2.pth"),
        _official_v2("vovnet19_slim", "8h5ybmi4ftbcom0", "vovnet19_ese_slim_detectron2.pth"),
        _official_v2("vovnet19_dw", "9awvl0mxye3nqz1", "vovnet19_ese_dw_detectron2.pth"),
        _official_v2("vovnet19", "rptgw6stppbiw1u", "vovnet19_ese_detectron2.pth", ("f5db5r6jjia2wj8", "vovnet19-ese-statedict.pth")),
        _official_v2("vovnet39", "q98pypf96rhtd8y", "vovnet39_ese_detectron2.pth", ("8rhfcw53hc49k5x", "vovnet39_ese_state_dict.pth")),
        _official_v2("vovnet57", "8xl0cb3jj51f45a", "vovnet57_ese_detectron2.pth", ("vci2ih0nq3t3lu4", "vovnet57_ese_state_dict.pth")),
        _official_v2("vovnet99", "1mlv31coewx8trd", "vovnet99_ese_detectron2.pth", ("3wflmwz0wx50ywt", "vovnet99_ese_state_dict.pth")),
        _v1("vovnet39_v1", "1lnzsgnixd8gjra", "vovnet39_torchvision.pth", 23.23),
        _v1("vovnet57_v1", "6bfu9gstbwfw31m", "vovnet57_torchvision.pth", 22.27),
        _timm("vovnet19_dw", "ese_vovnet19b_dw.ra_in1k", TIMM_RA_INPUT, Metric(76.828, 224, _TIMM_RESULTS),
              ("ese_vovnet19b_dw-a8741004.pth", "a8741004")),
        # timm places eSE on the last block of each stage only: vovnet39/57 with ese="last".
        _timm("vovnet39", "ese_vovnet39b.ra_in1k", TIMM_RA_INPUT, Metric(79.312, 224, _TIMM_RESULTS),
              ("ese_vovnet39b-f912fe73.pth", "f912fe73"), ese="last"),
        _timm("vovnet57", "ese_vovnet57b.ra4_e3600_r256_in1k", TIMM_RA4_R256_INPUT, Metric(82.46, 256, _TIMM_RESULTS),
              ese="last"),
        _centermask2("vovnet19_slim_dw", "vsvhwtqm6ko1c7m", "centermask-lite-V-19-eSE-slim-dw-FPN-ms-4x.pth", 27.1, 29.5, lite=True),
        _centermask2("vovnet19_slim", "o2n1ifl0zkbv16x", "centermask-lite-V-19-eSE-slim-FPN-ms-4x.pth", 29.8, 32.5, lite=True),
        _centermask2("vovnet19", "dret2ap7djty7mp", "centermask2-lite-V-19-eSE-FPN-ms-4x.pth", 32.8, 35.9, lite=True),
        _centermask2("vovnet39", "uwc0ypa1jvco2bi", "centermask2-lite-V-39-eSE-FPN-ms-4x.pth", 36.7, 40.9, lite=True),
        _centermask2("vovnet39", "tczecsdxt10uai5", "centermask2-V-39-eSE-FPN-ms-3x.pth", 39.7, 44.2, lite=False),
        _centermask2("vovnet57", "lw8nxajv1tim8gr", "centermask2-V-57-eSE-FPN-ms-3x.pth", 40.5, 45.1, lite=False),
        _centermask2("vovnet99", "c6n79x83xkdowqc", "centermask2-V-99-eSE-FPN-ms-3x.pth", 41.4, 46.0, lite=False),
        _detectron2("faster_rcnn_lite", "vovnet19", _WWW + "u5pvmhc871ohvgw/fast_V_19_eSE_FPNLite_ms_3x.pth?dl=1", 38.9),
        _detectron2("faster_rcnn_lite", "vovnet19_dw", _WWW + "7h6zn0owumucs48/faster_rcnn_V_19_eSE_dw_FPNLite_ms_3x.pth?dl=1", 36.7),
        _detectron2("faster_rcnn_lite", "vovnet19_slim", _WWW + "yao1i32zdylx279/faster_rcnn_V_19_eSE_slim_FPNLite_ms_3x.pth?dl=1", 35.2),
        _detectron2("faster_rcnn_lite", "vovnet19_slim_dw", _WWW + "blpjx3iavrzkygt/faster_rcnn_V_19_eSE_slim_dw_FPNLite_ms_3x.pth?dl=1", 32.4),
        _detectron2("faster_rcnn", "vovnet19", _WWW + "1rfvi6vzx45z6y5/faster_V_19_eSE_ms_3x.pth?dl=1", 38.9),
        _detectron2("faster_rcnn", "vovnet39", _DL + "dkto39ececze6l4/faster_V_39_eSE_ms_3x.pth", 42.7),
        _detectron2("faster_rcnn", "vovnet57", _DL + "c7mb1mq10eo4pzk/faster_V_57_eSE_ms_3x.pth", 43.3),
        _detectron2("faster_rcnn", "vovnet99", _DL + "v64mknwzfpmfcdh/faster_V_99_eSE_ms_3x.pth", 44.1),
        _detectron2("mask_rcnn_lite", "vovnet19", _WWW + "h1khv9l7quakvz0/mask_V_19_eSE_FPNLite_ms_3x.pth?dl=1", 39.7, 36.4),
        _detectron2("mask_rcnn", "vovnet19", _WWW + "dyeyuag5va96tqo/mask_V_19_eSE_ms_3x.pth?dl=1", 40.1, 36.6),
        _detectron2("mask_rcnn", "vovnet39", _DL + "c5o3yr6lwrb1170/mask_V_39_eSE_ms_3x.pth", 43.8, 39.3),
        _detectron2("mask_rcnn", "vovnet57", _DL + "aturknfroupyw92/mask_V_57_eSE_ms_3x.pth", 44.2, 39.7),
        _detectron2("mask_rcnn", "vovnet99", _DL + "qx45cnv718k4zmn/mask_V_99_eSE_ms_3x.pth", 44.9, 40.3),
        _detectron2("panoptic_fpn", "vovnet39", _WWW + "fnr9r4arv0cbfbf/panoptic_V_39_eSE_3x.pth?dl=1", 42.8, 38.5, 43.4),
        _detectron2("panoptic_fpn", "vovnet57", _WWW + "zhoqx5rvc0jj0oa/panoptic_V_57_eSE_3x.pth?dl=1", 43.4, 39.2, 44.3),
        _dd3d_v99(
            "dd3d_ddad15m",
            WeightFile("depth_pretrained_v99-3jlw0p36-20210423_010520-model_final-remapped.pth",
                       ("https://tri-ml-public.s3.amazonaws.com/github/dd3d/pretrained/"
                        "depth_pretrained_v99-3jlw0p36-20210423_010520-model_final-remapped.pth",)),
            "MIT (DD3D's LICENSE.md; no other terms are given for the weights)", _DD3D_README,
            "depth-pretrained on DDAD15M (TRI's dataset, not public) from COCO weights ('from-coco, IODA-pretrained' in "
            "dd3d_nusc_v99.yaml); a whole DD3D model: {'model': ...} with the body under backbone.bottom_up., its FPN and "
            "heads left out; DD3D trains it with FrozenBN"),
        _dd3d_v99(
            "fcos3d_nuscenes",
            WeightFile("fcos3d_vovnet_imgbackbone-remapped.pth", (),
                       page="https://drive.google.com/file/d/1ABI5BoQCkCkP4B0pO5KBJ3Ni0tei0gZi/view?usp=sharing"),
            "unspecified (no terms are given for the file; it derives from DD3D's MIT-licensed weights)", _PETR_README,
            "DD3D's DDAD15M V2-99 further trained on nuScenes train with FCOS3D (PETR README, whose V2-99 link this is and "
            "whose VoVNet configs load it as ckpts/fcos3d_vovnet_imgbackbone-remapped.pth); the body under img_backbone. "
            f"in {{'state_dict': ...}}; on {_DRIVE}"),
        _dd3d_v99(
            "dd3d_det_final_nuscenes_trainval",
            WeightFile("dd3d_det_final.pth", (), page="https://drive.google.com/drive/folders/1h5bDg7Oh9hKvkFL-dRhu5-ahrEp2lRNN"),
            "unspecified (no terms are given for the file; it derives from DD3D's MIT-licensed weights)", _PETR_README,
            "trained on nuScenes train+val (PETR README: for its test-set results; PETR#75): results on nuScenes val with "
            "it are not valid; DETR3D's trainval config loads it as ckpts/dd3d_det_final.pth; the body under "
            f"img_backbone. in {{'state_dict': ...}}; in a folder on {_DRIVE}"),
    )
}


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Tags of the published weights: all, those containing ``pattern``, or matching it (``*`` wildcards)."""
    if pattern is None:
        return list(PRETRAINED)
    if any(c in pattern for c in "*?["):
        return [t for t in PRETRAINED if fnmatch.fnmatchcase(t, pattern)]
    return [t for t in PRETRAINED if pattern in t]


def get_pretrained(tag: str) -> PretrainedWeights:
    """The record of ``tag``; UsageError naming close tags when there is none."""
    try:
        return PRETRAINED[tag]
    except KeyError:
        close = difflib.get_close_matches(tag, PRETRAINED, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `vovnet weights`"
        raise UsageError(f"unknown pretrained tag {tag!r}{hint}") from None


def default_tag(model: str) -> str:
    """The tag ``create_model(model, pretrained=True)`` loads."""
    for w in PRETRAINED.values():
        if w.model == model and w.default:
            return w.tag
    raise UsageError(f"no published weights for {model}; models with some: {', '.join(sorted({w.model for w in PRETRAINED.values()}))}")


def as_tag(pretrained: bool | str | os.PathLike | None, model: str | None = None) -> str | None:
    """The tag ``pretrained`` names (True: ``model``'s default), or None when it is a path or nothing.

    A string that is no file and reads like a tag (``name.weights``, no folder, no file suffix) but is
    not one is a UsageError, so a typo is not reported as a missing file.
    """
    if pretrained is True:
        if model is None:
            raise UsageError("pretrained=True needs a model name")
        return default_tag(model)
    if not isinstance(pretrained, str) or not pretrained:
        return None
    if pretrained in PRETRAINED:
        return pretrained
    looks_like_tag = (
        "." in pretrained and os.sep not in pretrained and "/" not in pretrained
        and not pretrained.endswith((".pth", ".pt", ".bin", ".safetensors", ".pkl"))
    )
    if looks_like_tag and not os.path.exists(pretrained):
        get_pretrained(pretrained)  # raises, naming close tags
    return None


def pretrained_options(pretrained: str | os.PathLike | None) -> dict:
    """The dialect options (``ese="last"``, ...) a tag's network is built with; {} for a path or nothing."""
    tag = as_tag(pretrained)
    return dict(get_pretrained(tag).options) if tag else {}
