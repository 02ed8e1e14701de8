"""Panoptic quality against ``reference/panoptic_quality.py`` (the definition written out pixel by pixel) on generated
segment maps with crowd and void regions, a case worked by hand, and where torchmetrics' PanopticQuality differs."""

import numpy as np
import pytest
import torch
from reference.panoptic_quality import image_counts, summary

from vovnet.tasks.detection.panoptic_quality import PanopticQuality, image_stats

# 4 x 6 ground truth: A (thing 0, id 1), B (stuff 2, id 2), a crowd C (thing 0, id 3), void 0.
GT = [[1, 1, 1, 2, 2, 2],
      [1, 1, 1, 2, 2, 2],
      [0, 0, 3, 3, 3, 3],
      [0, 0, 3, 3, 3, 3]]
GT_SEGMENTS = {1: (0, False), 2: (2, False), 3: (0, True)}
# a (thing 0) covers 5 of A's 6 pixels and one of B's; b (stuff 2) 4 of B's; d (thing 0) half void, half C (its
# category's crowd): no false positive; e (thing 1) on C, another category's crowd: a false positive.
PRED = [[1, 1, 1, 1, 2, 2],
        [1, 1, 0, 0, 2, 2],
        [4, 4, 4, 4, 5, 5],
        [4, 4, 4, 4, 5, 5]]
PRED_SEGMENTS = {1: 0, 2: 2, 4: 0, 5: 1}


def test_a_case_worked_by_hand():
    stats = image_stats(torch.tensor(PRED), PRED_SEGMENTS, torch.tensor(GT), GT_SEGMENTS, 3)
    # a/A: 5 / (6 + 6 - 5) = 5/7; b/B: 4 / (4 + 6 - 4) = 2/3
    assert stats.tolist() == [[1, 0, 0, 5 / 7], [0, 1, 0, 0], [1, 0, 0, 4 / 6]]
    quality = PanopticQuality(["t0", "t1"], ["s0"])
    segments = torch.tensor([[1, 1, 0, 0.9, 0], [4, 1, 0, 0.8, 1], [5, 1, 1, 0.7, 2], [2, 0, 1, 24, -1]])  # combine_panoptic's rows
    target = {"panoptic": torch.tensor(GT), "segments": torch.tensor([[1, 0, 0], [2, 2, 0], [3, 0, 1]])}
    quality.update([{"panoptic_seg": torch.tensor(PRED, dtype=torch.int32), "segments": segments}], [target])
    metrics, details = quality.compute()
    assert metrics == {"pq": (5 / 7 + 0 + 4 / 6) / 3, "sq": (5 / 7 + 0 + 4 / 6) / 3, "rq": 2 / 3,
                       "pq_things": 5 / 7 / 2, "sq_things": 5 / 7 / 2, "rq_things": 0.5,
                       "pq_stuff": 4 / 6, "sq_stuff": 4 / 6, "rq_stuff": 1.0}
    assert details["panoptic_categories"] == {"all": 3, "things": 2, "stuff": 1}
    assert details["panoptic_per_class"]["t1"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_torchmetrics_panoptic_quality_computes_another_definition():
    """Why the metric is ours (its module docstring): on the case above torchmetrics takes the crowd region C for a
    ground truth (a false negative) and d, half void and half C, for a false positive; and its IoU leaves out the ground
    truth's pixels that the prediction leaves void (a/A: 5 / 6, COCO's 5 / 7; b/B: 4 / 5, COCO's 4 / 6)."""
    from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

    def colours(ids, categories):
        cat = torch.tensor([[categories.get(v, 9) for v in row] for row in ids])  # 9: an unknown category, void
        return torch.stack([cat, torch.tensor(ids)], -1)[None]

    metric = TorchmetricsPQ(things={0, 1}, stuffs={2}, return_per_class=True, return_sq_and_rq=True, allow_unknown_preds_category=True)
    per_class = metric(colours(PRED, PRED_SEGMENTS), colours(GT, {g: c for g, (c, _) in GT_SEGMENTS.items()}))
    assert metric.true_positives.tolist() == [1, 0, 1] and metric.false_positives.tolist() == [1, 1, 0]
    assert metric.false_negatives.tolist() == [1, 0, 0]  # ours: [0, 0, 0], and false positives [0, 1, 0]
    assert per_class[0].tolist() == pytest.approx([5 / 6 / 2, 5 / 6, 1 / 2])  # ours: [5 / 7, 5 / 7, 1]
    assert per_class[2].tolist() == pytest.approx([4 / 5, 4 / 5, 1])  # ours: [4 / 6, 4 / 6, 1]


def _random_image(rng, things=3, stuff=2, h=20, w=24):
    """Ground truth and prediction maps of rectangles: stuff bands, things (a quarter of them crowd), void rectangles;
    the prediction jittered, some categories changed, some extra segments, ids renumbered."""
    gt = np.zeros((h, w), dtype=np.int64)
    gt_segments, rects = {}, []
    bands = np.sort(rng.choice(np.arange(2, h - 2), stuff - 1, replace=False))
    edges = [0, *bands.tolist(), h]
    for s in range(stuff):
        gt[edges[s] : edges[s + 1]] = s + 1
        gt_segments[s + 1] = (things + s, False)
        rects.append((things + s, edges[s], 0, edges[s + 1] - edges[s], w))
    for k in range(int(rng.integers(2, 7))):
        category = int(rng.integers(things))
        y, x, hh, ww = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3)), int(rng.integers(3, 9)), int(rng.integers(3, 10))
        sid = 10 + k
        gt[y : y + hh, x : x + ww] = sid
        gt_segments[sid] = (category, bool(rng.random() < 0.25))
        rects.append((category, y, x, hh, ww))
    for _ in range(int(rng.integers(0, 3))):
        y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        gt[y : y + int(rng.integers(1, 6)), x : x + int(rng.integers(1, 6))] = 0
    gt_segments = {g: v for g, v in gt_segments.items() if (gt == g).any()}

    pred = np.zeros((h, w), dtype=np.int64)
    pred_segments = {}
    extra = [(int(rng.integers(things + stuff)), int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3)), 5, 6)
             for _ in range(int(rng.integers(0, 3)))]
    for k, (category, y, x, hh, ww) in enumerate(rects + extra):
        if rng.random() < 0.15:
            continue  # missed
        if rng.random() < 0.2:
            category = int(rng.integers(things + stuff))
        dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
        y0, x0 = max(y + dy, 0), max(x + dx, 0)
        pid = 100 + 7 * k
        pred[y0 : y0 + hh + int(rng.integers(-1, 2)), x0 : x0 + ww + int(rng.integers(-1, 2))] = pid
        pred_segments[pid] = category
    if rng.random() < 0.5:
        y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        pred[y : y + 4, x : x + 5] = 0  # predicted void
    pred_segments = {p: c for p, c in pred_segments.items() if (pred == p).any()}
    return gt, gt_segments, pred, pred_segments


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_reference_on_generated_maps(seed):
    rng = np.random.default_rng(seed)
    things, stuff = 3, 2
    quality = PanopticQuality([f"t{k}" for k in range(things)], [f"s{k}" for k in range(stuff)])
    counts = {c: [0, 0, 0, 0.0] for c in range(things + stuff)}
    crowd_seen = void_seen = 0
    for _ in range(3):
        gt, gt_segments, pred, pred_segments = _random_image(rng, things, stuff)
        crowd_seen += sum(crowd for _, crowd in gt_segments.values())
        void_seen += int((gt == 0).sum())
        image_counts(gt.tolist(), gt_segments, pred.tolist(), pred_segments, counts)
        rows = [[p, c < things, c if c < things else c - things + 1, 1.0, -1] for p, c in pred_segments.items()]
        quality.update([{"panoptic_seg": torch.from_numpy(pred).int(), "segments": torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)}],
                       [{"panoptic": torch.from_numpy(gt), "segments": torch.tensor([[g, c, int(k)] for g, (c, k) in gt_segments.items()])}])
    assert crowd_seen and void_seen  # every seed exercises both
    stats = quality.stats
    for c in range(things + stuff):
        assert stats[c, :3].tolist() == counts[c][:3], c  # TP, FP, FN exactly
        assert stats[c, 3].item() == pytest.approx(counts[c][3], rel=1e-12, abs=1e-12)
    metrics, _ = quality.compute()
    want = summary(counts, {c: c < things for c in range(things + stuff)})
    assert metrics.keys() == want.keys()
    for key in want:
        assert metrics[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key


def test_sums_over_processes_and_says_when_there_is_nothing():
    quality = PanopticQuality(["t"], ["s"])
    assert quality.compute() == ({}, {})
    quality.update([{}], [{"boxes": torch.zeros(0, 4)}])  # instance data: passed over
    assert quality.images == 0
    doubled = quality.compute(lambda values: [2 * v for v in values])
    assert doubled == ({}, {})
