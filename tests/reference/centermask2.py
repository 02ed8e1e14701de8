"""An independent, functional CenterMask inference over a centermask2 (official-layout) state dict.

Written from the official code (youngwanLEE/centermask2 @6adabd6: ``fcos.py``, ``fcos_outputs.py``,
``center_heads.py``, ``pooler.py``, ``mask_head.py``, ``sam.py``, ``maskiou_head.py``; detectron2 @02b5c4e:
``fpn.py``, ``postprocessing.py``, ``mask_ops.py``), not from our modules: it walks the official key names
with torch.nn.functional, so a renaming or inference bug on our side cannot hide in both places. The
backbone is :func:`reference.official.official_features`. Used only by parity tests.

Also :func:`make_state_dict`, a generated centermask2 checkpoint (random weights in the official layout,
scaled so a small image gives a few dozen detections with non-trivial masks).
"""

import math
import sys

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, roi_align

from reference.official import official_features

PIXEL_MEAN = (103.530, 116.280, 123.675)
STRIDES = (8, 16, 32, 64, 128)
FCOS = {"thresh": 0.05, "pre_nms_topk": 1000, "nms": 0.6, "post_nms_topk": 50}
HEAD = "proposal_generator.fcos_head."
MASK = "roi_heads.mask_head."
MASKIOU = "roi_heads.maskiou_head."


def _conv(sd, prefix, x, stride=1):
    w = sd[prefix + ".weight"]
    return F.conv2d(x, w, sd.get(prefix + ".bias"), stride, w.shape[-1] // 2)


# ---- detectron2's FPN with centermask2's LastLevelP6P7 on P5 --------------------------------------------------
def fpn(sd, c3, c4, c5):
    """``[p3, p4, p5, p6, p7]``: lateral 1x1 + nearest 2x top-down, 3x3 outputs; p6 = conv(p5), p7 = conv(relu(p6))."""
    prev = _conv(sd, "backbone.fpn_lateral5", c5)
    results = [_conv(sd, "backbone.fpn_output5", prev)]
    for stage, c in ((4, c4), (3, c3)):
        prev = _conv(sd, f"backbone.fpn_lateral{stage}", c) + F.interpolate(prev, scale_factor=2.0, mode="nearest")
        results.insert(0, _conv(sd, f"backbone.fpn_output{stage}", prev))
    p6 = _conv(sd, "backbone.top_block.p6", results[-1], 2)
    p7 = _conv(sd, "backbone.top_block.p7", F.relu(p6), 2)
    return results + [p6, p7]


# ---- FCOS head and predict_proposals ---------------------------------------------------------------------------
def _tower(sd, name, x):
    i = 0
    while f"{HEAD}{name}.{i}.weight" in sd:
        x = _conv(sd, f"{HEAD}{name}.{i}", x)
        x = F.relu(F.group_norm(x, 32, sd[f"{HEAD}{name}.{i + 1}.weight"], sd[f"{HEAD}{name}.{i + 1}.bias"], 1e-5))
        i += 3  # conv, GroupNorm, ReLU
    return x


def fcos_head(sd, features):
    """Per level: class logits ``[N, K, H, W]``, ``relu(scale * bbox_pred)`` ``[N, 4, H, W]``, centerness ``[N, 1, H, W]``."""
    logits, regs, ctrs = [], [], []
    for level, x in enumerate(features):
        cls_tower, box_tower = _tower(sd, "cls_tower", x), _tower(sd, "bbox_tower", x)
        logits.append(_conv(sd, HEAD + "cls_logits", cls_tower))
        ctrs.append(_conv(sd, HEAD + "ctrness", box_tower))
        regs.append(F.relu(_conv(sd, HEAD + "bbox_pred", box_tower) * sd[f"{HEAD}scales.{level}.scale"]))
    return logits, regs, ctrs


def predict_proposals(logits, regs, ctrs, image_index=0):
    """One image's detections: boxes (unclipped), scores ``sqrt(cls * ctr)``, 0-based classes; after class-wise
    NMS over all levels and the k-th value cut to ``post_nms_topk``."""
    boxes, scores, classes = [], [], []
    for box_cls, reg, ctr, stride in zip(logits, regs, ctrs, STRIDES):
        _, c, h, w = box_cls.shape
        shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32)
        shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        locations = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=1) + stride // 2
        box_cls = box_cls[image_index].permute(1, 2, 0).reshape(-1, c).sigmoid()
        box_reg = (reg[image_index] * stride).permute(1, 2, 0).reshape(-1, 4)
        centerness = ctr[image_index].permute(1, 2, 0).reshape(-1).sigmoid()
        candidate = box_cls > FCOS["thresh"]
        top_n = min(int(candidate.sum()), FCOS["pre_nms_topk"])
        box_cls = box_cls * centerness[:, None]
        per_cls = box_cls[candidate]
        nonzero = torch.nonzero(candidate, as_tuple=False)
        loc, klass = nonzero[:, 0], nonzero[:, 1]
        per_reg, per_loc = box_reg[loc], locations[loc]
        if int(candidate.sum()) > top_n:
            per_cls, top = per_cls.topk(top_n, sorted=False)
            klass, per_reg, per_loc = klass[top], per_reg[top], per_loc[top]
        boxes.append(torch.stack([per_loc[:, 0] - per_reg[:, 0], per_loc[:, 1] - per_reg[:, 1],
                                  per_loc[:, 0] + per_reg[:, 2], per_loc[:, 1] + per_reg[:, 3]], dim=1))
        scores.append(torch.sqrt(per_cls))
        classes.append(klass)
    boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
    keep = batched_nms(boxes.float(), scores, classes, FCOS["nms"])
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    n = len(scores)
    if n > FCOS["post_nms_topk"] > 0:
        thresh, _ = torch.kthvalue(scores.cpu(), n - FCOS["post_nms_topk"] + 1)
        keep = torch.nonzero(scores >= thresh.item()).squeeze(1)
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    return boxes, scores, classes


# ---- RoI heads ----------------------------------------------------------------------------------------------
def pool(features, boxes, image_size):
    """ROIPooler with ASSIGN_CRITERION "ratio": level ``ceil(5 - log2(img_area / box_area + eps))`` in [3, 5],
    ROIAlignV2 14x14 (aligned, sampling ratio 0)."""
    img_area = torch.as_tensor(image_size[0] * image_size[1], dtype=torch.float)
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    levels = torch.clamp(torch.ceil(5 - torch.log2(img_area / box_area + sys.float_info.epsilon)), min=3, max=5).long() - 3
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    out = torch.zeros(len(boxes), features[0].shape[1], 14, 14)
    for level, x in enumerate(features[:3]):
        inds = torch.nonzero(levels == level).squeeze(1)
        out[inds] = roi_align(x, rois[inds], (14, 14), spatial_scale=1.0 / 2 ** (level + 3), sampling_ratio=0, aligned=True)
    return out


def mask_head(sd, x):
    """SpatialAttentionMaskHead: mask_fcn1..N (conv + ReLU), SAM over channels, deconv + ReLU, predictor."""
    k = 1
    while f"{MASK}mask_fcn{k}.weight" in sd:
        x = F.relu(_conv(sd, f"{MASK}mask_fcn{k}", x))
        k += 1
    scale = torch.cat([torch.mean(x, dim=1, keepdim=True), torch.max(x, dim=1, keepdim=True)[0]], dim=1)
    x = x * torch.sigmoid(F.conv2d(scale, sd[MASK + "spatialAtt.conv.weight"], padding=1))
    x = F.relu(F.conv_transpose2d(x, sd[MASK + "deconv.weight"], sd[MASK + "deconv.bias"], stride=2))
    return F.conv2d(x, sd[MASK + "predictor.weight"], sd[MASK + "predictor.bias"])


def maskiou_head(sd, x, mask):
    """MaskIoUHead: cat(features, maxpool2x2(mask)), maskiou_fcn1..N (the last with stride 2), 3 linears."""
    x = torch.cat((x, F.max_pool2d(mask, 2, 2)), 1)
    k = 1
    while f"{MASKIOU}maskiou_fcn{k}.weight" in sd:
        stride = 2 if f"{MASKIOU}maskiou_fcn{k + 1}.weight" not in sd else 1
        x = F.relu(_conv(sd, f"{MASKIOU}maskiou_fcn{k}", x, stride))
        k += 1
    x = torch.flatten(x, 1)
    x = F.relu(F.linear(x, sd[MASKIOU + "maskiou_fc1.weight"], sd[MASKIOU + "maskiou_fc1.bias"]))
    x = F.relu(F.linear(x, sd[MASKIOU + "maskiou_fc2.weight"], sd[MASKIOU + "maskiou_fc2.bias"]))
    return F.linear(x, sd[MASKIOU + "maskiou.weight"], sd[MASKIOU + "maskiou.bias"])


# ---- detectron2 post-processing ---------------------------------------------------------------------------
def paste_masks_in_image(masks, boxes, image_shape, threshold=0.5):
    """``_do_paste_mask`` on the whole image (GPU path): pixel centres + 0.5, grid_sample, ``>= threshold``."""
    img_h, img_w = image_shape
    if len(masks) == 0:
        return torch.zeros(0, img_h, img_w, dtype=torch.bool)
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    img_y = torch.arange(0, img_h, dtype=torch.float32) + 0.5
    img_x = torch.arange(0, img_w, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    n = masks.shape[0]
    gx = img_x[:, None, :].expand(n, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(n, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0] >= threshold


def detector_postprocess(boxes, scores, classes, mask_probs, mask_scores, image_size, output_size):
    scale_x, scale_y = output_size[1] / image_size[1], output_size[0] / image_size[0]
    boxes = boxes.clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    h, w = output_size
    boxes[:, 0].clamp_(min=0, max=w)
    boxes[:, 1].clamp_(min=0, max=h)
    boxes[:, 2].clamp_(min=0, max=w)
    boxes[:, 3].clamp_(min=0, max=h)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    boxes, scores, classes, mask_probs, mask_scores = boxes[keep], scores[keep], classes[keep], mask_probs[keep], mask_scores[keep]
    masks = paste_masks_in_image(mask_probs[:, 0], boxes, output_size)
    return {"boxes": boxes, "scores": scores, "classes": classes, "mask_scores": mask_scores, "masks": masks}


def centermask2_inference(sd, image_bgr, output_size=None):
    """GeneralizedRCNN.inference on one BGR 0..255 image ``[3, H, W]`` (already resized).

    Returns ``fpn`` (p3..p7), ``head`` (logits, regs, ctrs per level) and ``instances`` (boxes, scores,
    0-based classes, mask_scores, bool masks at ``output_size``, default the image's size).
    """
    h, w = image_bgr.shape[-2:]
    x = image_bgr - torch.tensor(PIXEL_MEAN)[:, None, None]
    x = F.pad(x, (0, math.ceil(w / 32) * 32 - w, 0, math.ceil(h / 32) * 32 - h))[None]
    backbone = {k[len("backbone.bottom_up."):]: v for k, v in sd.items() if k.startswith("backbone.bottom_up.")}
    _, c3, c4, c5 = official_features(backbone, x)
    features = fpn(sd, c3, c4, c5)
    logits, regs, ctrs = fcos_head(sd, features)
    boxes, scores, classes = predict_proposals(logits, regs, ctrs)
    mask_features = pool(features, boxes, (h, w))
    mask_logits = mask_head(sd, mask_features)
    mask_probs = mask_logits[torch.arange(len(classes)), classes][:, None].sigmoid()
    maskiou = maskiou_head(sd, mask_features, mask_probs)
    mask_scores = scores * maskiou[torch.arange(len(classes)), classes]
    instances = detector_postprocess(boxes, scores, classes, mask_probs, mask_scores, (h, w), output_size or (h, w))
    return {"fpn": features, "head": (logits, regs, ctrs), "instances": instances}


# ---- generated checkpoints -----------------------------------------------------------------------------------
def head_state_dict(fpn_in, num_classes, lite, seed=0, shapes_only=False):
    """The FPN and heads of a centermask2 checkpoint in the official layout, random but scaled for detections.

    ``fpn_in``: channels of stages 3, 4, 5. Full: 256-wide FPN, 4-conv towers, 4 x 256 mask convs, 4 x 256
    MaskIoU convs; Lite: 128 and 2 everywhere. ``shapes_only``: tensors on the meta device (no values).
    """
    g = torch.Generator().manual_seed(seed)

    def _normal(g, shape, std, mean=0.0):
        if shapes_only:
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=g) * std + mean

    def _uniform(g, shape, low, high):
        if shapes_only:
            return torch.empty(shape, device="meta")
        return torch.rand(shape, generator=g) * (high - low) + low

    c, n = (128, 2) if lite else (256, 4)
    sd = {}

    def conv(name, cin, cout, k, gain=2.0, bias_std=0.1, bias_mean=0.0):
        sd[name + ".weight"] = _normal(g, (cout, cin, k, k), math.sqrt(gain / (cin * k * k)))
        sd[name + ".bias"] = _normal(g, (cout,), bias_std, bias_mean)

    for stage, cin in zip((3, 4, 5), fpn_in):
        conv(f"backbone.fpn_lateral{stage}", cin, c, 1, gain=1.0)
        conv(f"backbone.fpn_output{stage}", c, c, 3, gain=1.0)
    conv("backbone.top_block.p6", c, c, 3, gain=1.0)
    conv("backbone.top_block.p7", c, c, 3, gain=1.0)
    for tower in ("cls_tower", "bbox_tower"):
        for i in range(n):
            conv(f"{HEAD}{tower}.{3 * i}", c, c, 3)
            sd[f"{HEAD}{tower}.{3 * i + 1}.weight"] = _uniform(g, (c,), 0.5, 1.5)
            sd[f"{HEAD}{tower}.{3 * i + 1}.bias"] = _normal(g, (c,), 0.1)
    conv(HEAD + "cls_logits", c, num_classes, 3, gain=1.0, bias_std=0.3, bias_mean=-4.0)
    conv(HEAD + "bbox_pred", c, 4, 3, gain=0.05, bias_std=0.3, bias_mean=1.5)
    conv(HEAD + "ctrness", c, 1, 3, gain=1.0)
    for level in range(5):
        sd[f"{HEAD}scales.{level}.scale"] = _uniform(g, (1,), 0.8, 1.2)
    for k in range(1, n + 1):
        conv(f"{MASK}mask_fcn{k}", c, c, 3)
    sd[MASK + "spatialAtt.conv.weight"] = _normal(g, (1, 2, 3, 3), 0.3)
    sd[MASK + "deconv.weight"] = _normal(g, (c, c, 2, 2), math.sqrt(2.0 / (c * 4)))
    sd[MASK + "deconv.bias"] = _normal(g, (c,), 0.1)
    conv(MASK + "predictor", c, num_classes, 1, gain=1.0)
    for k in range(1, n + 1):
        conv(f"{MASKIOU}maskiou_fcn{k}", c + 1 if k == 1 else c, c, 3)
    for name, cin, cout in (("maskiou_fc1", c * 49, 1024), ("maskiou_fc2", 1024, 1024), ("maskiou", 1024, num_classes)):
        sd[f"{MASKIOU}{name}.weight"] = _normal(g, (cout, cin), math.sqrt(1.0 / cin))
        sd[f"{MASKIOU}{name}.bias"] = _normal(g, (cout,), 0.1, 0.5 if name == "maskiou" else 0.0)
    return sd


def make_state_dict(backbone_official, fpn_in, num_classes=3, lite=True, seed=0, shapes_only=False):
    """A whole centermask2 ``model`` dict: ``backbone_official`` (official-layout VoVNet keys) under
    ``backbone.bottom_up.`` plus :func:`head_state_dict`."""
    # detectron2's FrozenBatchNorm2d keeps no batch counter
    sd = {f"backbone.bottom_up.{k}": v for k, v in backbone_official.items() if not k.endswith("num_batches_tracked")}
    sd.update(head_state_dict(fpn_in, num_classes, lite, seed, shapes_only))
    return sd
