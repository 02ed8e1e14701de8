"""Panoptic quality written out plainly from its definition (Kirillov et al., "Panoptic Segmentation", and COCO's
evaluation as panopticapi's ``pq_compute`` applies it), pixel by pixel and pair by pair, for checking
``vovnet.tasks.detection.panoptic_quality`` on small maps.

- A pixel whose ground-truth id is 0 is void. A predicted pixel whose id is 0 or not a listed segment is void.
- A predicted segment P and a non-crowd ground-truth segment G of the same category match when
  IoU = |P and G| / (|P or G| - |P and void|) > 0.5.
- A non-crowd ground-truth segment that matches nothing is a false negative.
- A predicted segment that matches nothing is a false positive unless more than half of its pixels are void or lie in
  a crowd segment of its own category.
- Per category: PQ = sum IoU / (TP + FP / 2 + FN / 2), SQ = sum IoU / TP (0 without TP), RQ = TP / (TP + FP / 2 + FN / 2);
  averages over the categories with any TP, FP or FN (0 if none), of all, of things, of stuff.
"""


def pixels(segment_map, wanted) -> set:
    """The (row, column) positions where ``wanted(id)`` holds."""
    return {(r, c) for r, row in enumerate(segment_map) for c, v in enumerate(row) if wanted(v)}


def image_counts(gt_map, gt_segments, pred_map, pred_segments, counts) -> None:
    """Add one image's TP, FP, FN and IoU sum to ``counts[category]`` (a list of 4).

    ``gt_map`` / ``pred_map``: lists of rows of segment ids; ``gt_segments``: ``{id: (category, iscrowd)}``;
    ``pred_segments``: ``{id: category}``."""
    void = pixels(gt_map, lambda v: v == 0)
    gt_pixels = {g: pixels(gt_map, lambda v, g=g: v == g) for g in gt_segments}
    pred_pixels = {p: pixels(pred_map, lambda v, p=p: v == p) for p in pred_segments}
    matched_gt, matched_pred = set(), set()
    for g, (category, crowd) in gt_segments.items():
        if crowd:
            continue
        for p, pred_category in pred_segments.items():
            if pred_category != category or not pred_pixels[p]:
                continue
            both = gt_pixels[g] & pred_pixels[p]
            union = (gt_pixels[g] | pred_pixels[p]) - (pred_pixels[p] & void)
            iou = len(both) / len(union)
            if iou > 0.5:
                counts[category][0] += 1
                counts[category][3] += iou
                matched_gt.add(g)
                matched_pred.add(p)
    for g, (category, crowd) in gt_segments.items():
        if not crowd and g not in matched_gt:
            counts[category][2] += 1
    for p, category in pred_segments.items():
        if p in matched_pred or not pred_pixels[p]:
            continue
        crowd_pixels = set().union(*(gt_pixels[g] for g, (c, crowd) in gt_segments.items() if crowd and c == category))
        ignored = pred_pixels[p] & (void | crowd_pixels)
        if not len(ignored) > 0.5 * len(pred_pixels[p]):
            counts[category][1] += 1


def summary(counts, isthing) -> dict:
    """``counts``: ``{category: [TP, FP, FN, IoU sum]}``; ``isthing``: ``{category: bool}`` for every category."""
    out = {}
    for suffix, chosen in (("", lambda c: True), ("_things", lambda c: isthing[c]), ("_stuff", lambda c: not isthing[c])):
        pq, sq, rq, n = 0.0, 0.0, 0.0, 0
        for category in isthing:
            tp, fp, fn, iou = counts.get(category, [0, 0, 0, 0.0])
            if not chosen(category) or tp + fp + fn == 0:
                continue
            n += 1
            pq += iou / (tp + 0.5 * fp + 0.5 * fn)
            sq += iou / tp if tp else 0.0
            rq += tp / (tp + 0.5 * fp + 0.5 * fn)
        out.update({f"pq{suffix}": pq / n if n else 0.0, f"sq{suffix}": sq / n if n else 0.0, f"rq{suffix}": rq / n if n else 0.0})
    return out
