"""Mask pasting: the batched separable pastes against one-mask-at-a-time references (grid_sample as
detectron2 runs it; torchvision's own paste_masks_in_image)."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image

from vovnet.models.detection import paste
from vovnet.models.detection.paste import paste_masks, paste_masks_torchvision


def _reference_detectron2(masks: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """detectron2's _do_paste_mask, one mask at a time over the whole image: probabilities [R, h, w]."""
    out = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.tolist()):
        gy = ((torch.arange(h) + 0.5) - y1) / (y2 - y1) * 2 - 1
        gx = ((torch.arange(w) + 0.5) - x1) / (x2 - x1) * 2 - 1
        grid = torch.stack([gx[None, :].expand(h, w), gy[:, None].expand(h, w)], dim=-1)
        out.append(F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0])
    return torch.stack(out)


def _case(seed: int, r: int = 12, m: int = 28, h: int = 61, w: int = 83):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(r, m, m, generator=g)
    xy = torch.rand(r, 2, generator=g) * torch.tensor([w, h]) - 10  # some start outside the image
    wh = torch.rand(r, 2, generator=g) * torch.tensor([w, h]) * 0.8 + 0.3  # some under a pixel
    return masks, torch.cat([xy, xy + wh], dim=1), (h, w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paste_masks_equals_detectron2_grid_sample(seed):
    masks, boxes, (h, w) = _case(seed)
    want = _reference_detectron2(masks, boxes, h, w)
    probs = paste_masks(masks, boxes, (h, w), threshold=None)
    assert probs.shape == (len(masks), h, w)
    assert (probs - want).abs().max() < 1e-5
    got = paste_masks(masks[:, None], boxes, (h, w))  # [R, 1, M, M] accepted too
    assert got.dtype == torch.bool and got.shape == (len(masks), h, w)
    ambiguous = (want - 0.5).abs() < 1e-5  # rounding may decide these pixels either way
    assert torch.equal(got[~ambiguous], (want >= 0.5)[~ambiguous])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paste_masks_torchvision_equals_torchvision(seed):
    masks, boxes, (h, w) = _case(seed)
    want = paste_masks_in_image(masks[:, None], boxes, (h, w))[:, 0]
    got = paste_masks_torchvision(masks[:, None], boxes, (h, w))
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max() < 1e-5
    assert torch.equal(paste_masks_torchvision(masks, boxes, (h, w), threshold=0.5), got >= 0.5)


def test_the_two_pastes_differ_by_at_most_a_pixel_band():
    """torchvision's integer box shifts edges by up to a pixel: why the deployed model pastes as its eval model."""
    masks = torch.zeros(1, 28, 28)
    masks[:, 4:24, 4:24] = 1.0
    boxes = torch.tensor([[10.3, 12.7, 50.6, 47.2]])
    a, b = paste_masks(masks, boxes, (64, 64)), paste_masks_torchvision(masks, boxes, (64, 64)) >= 0.5
    assert a.any() and b.any()
    assert ((a ^ b).sum() / (a | b).sum()).item() < 0.2


def test_box_bounded_paste_equals_the_whole_image_product(monkeypatch):
    """Eagerly each mask is computed inside its box only; the export's whole-image product must agree."""
    masks, boxes, (h, w) = _case(3, r=9)
    boxes[0] = torch.tensor([-30.0, -20.0, -5.0, -2.0])  # wholly outside the image
    boxes[1] = torch.tensor([70.0, 50.0, 200.0, 90.0])  # reaching past the bottom right
    bounded = paste_masks(masks, boxes, (h, w), threshold=None), paste_masks_torchvision(masks, boxes, (h, w))
    monkeypatch.setattr(paste, "exporting", lambda: True)
    whole = paste_masks(masks, boxes, (h, w), threshold=None), paste_masks_torchvision(masks, boxes, (h, w))
    for got, want in zip(bounded, whole):
        assert got.shape == want.shape == (len(masks), h, w)
        assert (got - want).abs().max() < 1e-6
        assert (want[2:] > 0).any(dim=(1, 2)).all()  # the others have pixels, which the bounds must keep
    assert (bounded[0][0] == 0).all() and (bounded[1][0] == 0).all()
    # torchvision's own paste fails on a box wholly outside the image: compared on the others
    assert torch.allclose(bounded[1][1:], paste_masks_in_image(masks[1:, None], boxes[1:], (h, w))[:, 0], atol=1e-5)


def test_no_masks():
    assert paste_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (5, 7)).shape == (0, 5, 7)
    assert paste_masks_torchvision(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 7)).shape == (0, 5, 7)
