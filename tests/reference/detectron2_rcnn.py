"""An independent, functional forward of detectron2's GeneralizedRCNN and PanopticFPN inference as
vovnet-detectron2 configures them (``Base-RCNN-VoVNet-FPN.yaml``, ``Base-Panoptic-FPN.yaml``), over a state dict
in the official layout.

Written from the official code (detectron2 @02b5c4e: ``modeling/backbone/fpn.py``, ``anchor_generator.py``,
``box_regression.py``, ``proposal_generator/rpn.py``, ``proposal_utils.py``, ``poolers.py``,
``roi_heads/roi_heads.py``, ``fast_rcnn.py``, ``box_head.py``, ``mask_head.py``, ``postprocessing.py``,
``layers/mask_ops.py``, ``meta_arch/semantic_seg.py``, ``meta_arch/panoptic_fpn.py``; vovnet-detectron2 @b81c813:
``vovnet/vovnet.py``, ``configs/``), not from our modules: it walks the official key names with
torch.nn.functional, so a renaming or inference bug on our side cannot hide in both places. The backbone is
:func:`reference.official.official_features`; the mask paste is detectron2's, as :mod:`reference.centermask2`
writes it. Used only by parity tests.

Also :func:`make_state_dict`, a generated vovnet-detectron2 checkpoint (random weights in the official layout,
scaled so that a small image gives detections, masks of some size and a panoptic map with things and stuff).
"""

import math

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, roi_align

from reference.centermask2 import paste_masks_in_image
from reference.official import official_features

PIXEL_MEAN = (103.530, 116.280, 123.675)
STRIDES = (4, 8, 16, 32, 64)  # p2..p6
ANCHOR_SIZES = (32, 64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
RPN = {"pre_nms_topk": 1000, "post_nms_topk": 1000, "nms": 0.7}
ROI_HEADS = {"score": 0.05, "nms": 0.5, "topk": 100}
SCALE_CLAMP = math.log(1000.0 / 16)
COMBINE = {"overlap": 0.5, "stuff_area": 4096, "instances_score": 0.5}


def _conv(sd, prefix, x, stride=1):
    w = sd[prefix + ".weight"]
    return F.conv2d(x, w, sd.get(prefix + ".bias"), stride, w.shape[-1] // 2)


def _linear(sd, prefix, x):
    return F.linear(x, sd[prefix + ".weight"], sd[prefix + ".bias"])


# ---- FPN: stages 2..5, LastLevelMaxPool on p5 ------------------------------------------------------------------
def fpn(sd, c2, c3, c4, c5):
    """``[p2, p3, p4, p5, p6]``: lateral 1x1 + nearest 2x top-down, 3x3 outputs; p6 = max_pool(k=1, s=2) of p5."""
    prev = _conv(sd, "backbone.fpn_lateral5", c5)
    results = [_conv(sd, "backbone.fpn_output5", prev)]
    for stage, c in ((4, c4), (3, c3), (2, c2)):
        prev = _conv(sd, f"backbone.fpn_lateral{stage}", c) + F.interpolate(prev, scale_factor=2.0, mode="nearest")
        results.insert(0, _conv(sd, f"backbone.fpn_output{stage}", prev))
    return results + [F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)]


# ---- anchors and box regression ----------------------------------------------------------------------------------
def generate_cell_anchors(size, aspect_ratios=ASPECT_RATIOS):
    anchors = []
    area = size**2.0
    for aspect_ratio in aspect_ratios:
        w = math.sqrt(area / aspect_ratio)
        h = aspect_ratio * w
        anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def grid_anchors(features):
    """DefaultAnchorGenerator, offset 0: per level ``[H * W * A, 4]``, location-major."""
    out = []
    for x, stride, size in zip(features, STRIDES, ANCHOR_SIZES):
        h, w = x.shape[-2:]
        shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32)
        shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        out.append((shifts.view(-1, 1, 4) + generate_cell_anchors(size).view(1, -1, 4)).reshape(-1, 4))
    return out


def apply_deltas(deltas, boxes, weights):
    """Box2BoxTransform.apply_deltas: ``deltas [R, k * 4]``, ``boxes [R, 4]`` -> ``[R, k * 4]``."""
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=SCALE_CLAMP)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    x1, y1 = pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h
    x2, y2 = pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h
    return torch.stack((x1, y1, x2, y2), dim=-1).view(deltas.size())


def _clip(boxes, image_size):
    h, w = image_size
    return torch.stack([boxes[:, 0].clamp(min=0, max=w), boxes[:, 1].clamp(min=0, max=h),
                        boxes[:, 2].clamp(min=0, max=w), boxes[:, 3].clamp(min=0, max=h)], dim=1)


# ---- RPN ----------------------------------------------------------------------------------------------------------
def rpn(sd, features, image_size):
    """StandardRPNHead + find_top_rpn_proposals for one image: proposals ``[P, 4]`` and their logits ``[P]``."""
    anchors = grid_anchors(features)
    proposals, logits = [], []
    for x, anchors_l in zip(features, anchors):
        t = F.relu(_conv(sd, "proposal_generator.rpn_head.conv", x))
        score = _conv(sd, "proposal_generator.rpn_head.objectness_logits", t)
        deltas = _conv(sd, "proposal_generator.rpn_head.anchor_deltas", t)
        n, _, h, w = deltas.shape
        logits.append(score.permute(0, 2, 3, 1).flatten(1)[0])
        deltas = deltas.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).flatten(1, -2)[0]
        proposals.append(apply_deltas(deltas, anchors_l, (1.0, 1.0, 1.0, 1.0)))
    top_boxes, top_scores, level_ids = [], [], []
    for level, (boxes_l, logits_l) in enumerate(zip(proposals, logits)):
        k = min(len(logits_l), RPN["pre_nms_topk"])
        scores, idx = logits_l.topk(k)
        top_boxes.append(boxes_l[idx])
        top_scores.append(scores)
        level_ids.append(torch.full((k,), level, dtype=torch.int64))
    boxes, scores, lvl = torch.cat(top_boxes), torch.cat(top_scores), torch.cat(level_ids)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
    boxes = _clip(boxes, image_size)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
    keep = batched_nms(boxes, scores, lvl, RPN["nms"])[: RPN["post_nms_topk"]]
    return boxes[keep], scores[keep]


# ---- RoI heads ------------------------------------------------------------------------------------------------------
def pool(features, boxes, output_size):
    """ROIPooler with ROIAlignV2 on p2..p5: level ``floor(4 + log2(sqrt(area) / 224 + 1e-8))`` in [2, 5]."""
    box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.clamp(torch.floor(4 + torch.log2(box_sizes / 224 + 1e-8)), min=2, max=5).to(torch.int64) - 2
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    out = torch.zeros(len(boxes), features[0].shape[1], output_size, output_size)
    for level, x in enumerate(features[:4]):
        inds = torch.nonzero(levels == level).squeeze(1)
        out[inds] = roi_align(x, rois[inds], (output_size, output_size), spatial_scale=1.0 / 2 ** (level + 2),
                              sampling_ratio=0, aligned=True)
    return out


def box_head(sd, x):
    """FastRCNNConvFCHead (two FCs) + FastRCNNOutputLayers: class logits ``[R, K + 1]``, deltas ``[R, 4K]``."""
    x = torch.flatten(x, start_dim=1)
    x = F.relu(_linear(sd, "roi_heads.box_head.fc1", x))
    x = F.relu(_linear(sd, "roi_heads.box_head.fc2", x))
    return _linear(sd, "roi_heads.box_predictor.cls_score", x), _linear(sd, "roi_heads.box_predictor.bbox_pred", x)


def fast_rcnn_inference(scores, deltas, proposals, image_size):
    """predict_boxes / predict_probs + fast_rcnn_inference_single_image: boxes, scores, 0-based classes."""
    boxes = apply_deltas(deltas, proposals, (10.0, 10.0, 5.0, 5.0))
    scores = F.softmax(scores, dim=-1)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]  # the background is the last column
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = _clip(boxes.reshape(-1, 4), image_size).view(-1, num_bbox_reg_classes, 4)
    filter_mask = scores > ROI_HEADS["score"]
    filter_inds = filter_mask.nonzero()
    boxes = boxes[filter_mask]
    scores = scores[filter_mask]
    keep = batched_nms(boxes, scores, filter_inds[:, 1], ROI_HEADS["nms"])[: ROI_HEADS["topk"]]
    return boxes[keep], scores[keep], filter_inds[keep, 1]


def mask_head(sd, x):
    """MaskRCNNConvUpsampleHead: mask_fcn1..N (conv + ReLU), deconv + ReLU, 1x1 predictor (one channel per class)."""
    k = 1
    while f"roi_heads.mask_head.mask_fcn{k}.weight" in sd:
        x = F.relu(_conv(sd, f"roi_heads.mask_head.mask_fcn{k}", x))
        k += 1
    x = F.relu(F.conv_transpose2d(x, sd["roi_heads.mask_head.deconv.weight"], sd["roi_heads.mask_head.deconv.bias"], stride=2))
    return _conv(sd, "roi_heads.mask_head.predictor", x)


def detector_postprocess(boxes, scores, classes, mask_probs, image_size, output_size):
    scale_x, scale_y = output_size[1] / image_size[1], output_size[0] / image_size[0]
    boxes = boxes.clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes = _clip(boxes, output_size)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    out = {"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep]}
    if mask_probs is not None:
        out["masks"] = paste_masks_in_image(mask_probs[keep][:, 0], out["boxes"], output_size)
    return out


# ---- Panoptic FPN ----------------------------------------------------------------------------------------------
def sem_seg_head(sd, features):
    """SemSegFPNHead on p2..p5 (conv 3x3 no bias + GN(32) + ReLU, 2x bilinear up except at stride 4), summed,
    1x1 predictor, then 4x bilinear up: ``[N, C, H, W]`` logits of the padded image."""
    x = None
    for level, f in zip((2, 3, 4, 5), features[:4]):
        prefix, i = f"sem_seg_head.p{level}", 0
        while f"{prefix}.{i}.weight" in sd:
            f = F.conv2d(f, sd[f"{prefix}.{i}.weight"], None, 1, 1)
            f = F.relu(F.group_norm(f, 32, sd[f"{prefix}.{i}.norm.weight"], sd[f"{prefix}.{i}.norm.bias"]))
            if level != 2:
                f = F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False)
            i += 1 if level == 2 else 2  # the Upsample modules take the odd indices
        x = f if x is None else x + f
    x = _conv(sd, "sem_seg_head.predictor", x)
    return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


def sem_seg_postprocess(result, img_size, output_height, output_width):
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]


def combine_semantic_and_instance_outputs(instances, semantic_results):
    panoptic_seg = torch.zeros_like(semantic_results, dtype=torch.int32)
    sorted_inds = torch.argsort(-instances["scores"])
    current_segment_id = 0
    segments_info = []
    instance_masks = instances["masks"].to(dtype=torch.bool)
    for inst_id in sorted_inds:
        score = instances["scores"][inst_id].item()
        if score < COMBINE["instances_score"]:
            break
        mask = instance_masks[inst_id]
        mask_area = mask.sum().item()
        if mask_area == 0:
            continue
        intersect = (mask > 0) & (panoptic_seg > 0)
        intersect_area = intersect.sum().item()
        if intersect_area * 1.0 / mask_area > COMBINE["overlap"]:
            continue
        if intersect_area > 0:
            mask = mask & (panoptic_seg == 0)
        current_segment_id += 1
        panoptic_seg[mask] = current_segment_id
        segments_info.append({"id": current_segment_id, "isthing": True, "score": score,
                              "category_id": instances["classes"][inst_id].item(), "instance_id": inst_id.item()})
    for semantic_label in torch.unique(semantic_results).cpu().tolist():
        if semantic_label == 0:
            continue
        mask = (semantic_results == semantic_label) & (panoptic_seg == 0)
        mask_area = mask.sum().item()
        if mask_area < COMBINE["stuff_area"]:
            continue
        current_segment_id += 1
        panoptic_seg[mask] = current_segment_id
        segments_info.append({"id": current_segment_id, "isthing": False, "category_id": semantic_label, "area": mask_area})
    return panoptic_seg, segments_info


def rcnn_inference(sd, image_bgr, output_size=None):
    """GeneralizedRCNN.inference (PanopticFPN.inference when ``sd`` has a semantic head) on one BGR 0..255 image
    ``[3, H, W]`` (already resized).

    Returns ``fpn`` (p2..p6), ``proposals`` (boxes, logits), ``box_head`` (class logits and deltas of the
    proposals), ``instances`` (boxes, scores, 0-based classes and, with a mask head, bool masks at ``output_size``,
    default the image's size) and, for Panoptic FPN, ``sem_seg`` (``[C, H, W]`` logits at the output size),
    ``panoptic_seg`` and ``segments_info``.
    """
    h, w = image_bgr.shape[-2:]
    output_size = output_size or (h, w)
    x = image_bgr - torch.tensor(PIXEL_MEAN)[:, None, None]
    x = F.pad(x, (0, math.ceil(w / 32) * 32 - w, 0, math.ceil(h / 32) * 32 - h))[None]
    backbone = {k[len("backbone.bottom_up."):]: v for k, v in sd.items() if k.startswith("backbone.bottom_up.")}
    features = fpn(sd, *official_features(backbone, x))
    proposals, logits = rpn(sd, features, (h, w))
    scores, deltas = box_head(sd, pool(features, proposals, 7))
    boxes, det_scores, classes = fast_rcnn_inference(scores, deltas, proposals, (h, w))
    mask_probs = None
    if "roi_heads.mask_head.predictor.weight" in sd:
        mask_logits = mask_head(sd, pool(features, boxes, 14))
        mask_probs = mask_logits[torch.arange(len(classes)), classes][:, None].sigmoid()
    out = {"fpn": features, "proposals": (proposals, logits), "box_head": (scores, deltas),
           "instances": detector_postprocess(boxes, det_scores, classes, mask_probs, (h, w), output_size)}
    if "sem_seg_head.predictor.weight" in sd:
        sem = sem_seg_postprocess(sem_seg_head(sd, features)[0], (h, w), *output_size)
        out["sem_seg"] = sem
        out["panoptic_seg"], out["segments_info"] = combine_semantic_and_instance_outputs(out["instances"], sem.argmax(dim=0))
    return out


# ---- generated checkpoints -----------------------------------------------------------------------------------
def head_state_dict(fpn_in, num_classes, arch="mask_rcnn", fpn_channels=256, stuff_classes=3, seed=0, shapes_only=False):
    """The FPN and heads of a vovnet-detectron2 checkpoint in the official layout: random, scaled for detections.

    ``fpn_in``: channels of stages 2..5; ``arch``: ``faster_rcnn``, ``mask_rcnn`` or ``panoptic_fpn``; box head 2 x
    1024 FCs, mask head 4 x 256 convs, semantic head 128 wide (detectron2's defaults, which vovnet-detectron2 keeps).
    ``shapes_only``: tensors on the meta device.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        if shapes_only:
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=g) * std + mean

    c, sd = fpn_channels, {}

    def conv(name, cin, cout, k, gain=2.0, bias_std=0.1, bias_mean=0.0, bias=True):
        sd[name + ".weight"] = normal((cout, cin, k, k), math.sqrt(gain / (cin * k * k)))
        if bias:
            sd[name + ".bias"] = normal((cout,), bias_std, bias_mean)

    def linear(name, cin, cout, gain=2.0, bias_std=0.1):
        sd[name + ".weight"] = normal((cout, cin), math.sqrt(gain / cin))
        sd[name + ".bias"] = normal((cout,), bias_std)

    for stage, cin in zip((2, 3, 4, 5), fpn_in):
        conv(f"backbone.fpn_lateral{stage}", cin, c, 1, gain=1.0)
        conv(f"backbone.fpn_output{stage}", c, c, 3, gain=1.0)
    conv("proposal_generator.rpn_head.conv", c, c, 3)
    conv("proposal_generator.rpn_head.objectness_logits", c, 3, 1, gain=1.0)
    conv("proposal_generator.rpn_head.anchor_deltas", c, 12, 1, gain=0.02, bias_std=0.05)
    linear("roi_heads.box_head.fc1", c * 49, 1024)
    linear("roi_heads.box_head.fc2", 1024, 1024)
    linear("roi_heads.box_predictor.cls_score", 1024, num_classes + 1, gain=4.0, bias_std=0.5)
    linear("roi_heads.box_predictor.bbox_pred", 1024, 4 * num_classes, gain=0.05, bias_std=0.1)
    if arch != "faster_rcnn":
        for k in range(1, 5):
            conv(f"roi_heads.mask_head.mask_fcn{k}", c if k == 1 else 256, 256, 3)
        sd["roi_heads.mask_head.deconv.weight"] = normal((256, 256, 2, 2), math.sqrt(2.0 / (256 * 4)))
        sd["roi_heads.mask_head.deconv.bias"] = normal((256,), 0.1)
        conv("roi_heads.mask_head.predictor", 256, num_classes, 1, gain=1.0, bias_std=0.5, bias_mean=-0.5)
    if arch == "panoptic_fpn":
        for level in (2, 3, 4, 5):
            for i in range(max(1, level - 2)):
                index = 2 * i if level != 2 else i
                conv(f"sem_seg_head.p{level}.{index}", c if i == 0 else 128, 128, 3, bias=False)
                sd[f"sem_seg_head.p{level}.{index}.norm.weight"] = normal((128,), 0.2, 1.0)
                sd[f"sem_seg_head.p{level}.{index}.norm.bias"] = normal((128,), 0.1)
        conv("sem_seg_head.predictor", 128, stuff_classes, 1, gain=1.0, bias_std=0.5)
    return sd


def make_state_dict(backbone_official, fpn_in, num_classes=3, arch="mask_rcnn", fpn_channels=256, stuff_classes=3, seed=0,
                    shapes_only=False):
    """A whole vovnet-detectron2 ``model`` dict: ``backbone_official`` (official-layout VoVNet keys) under
    ``backbone.bottom_up.`` plus :func:`head_state_dict`."""
    sd = {f"backbone.bottom_up.{k}": v for k, v in backbone_official.items() if not k.endswith("num_batches_tracked")}
    sd.update(head_state_dict(fpn_in, num_classes, arch, fpn_channels, stuff_classes, seed, shapes_only))
    return sd
