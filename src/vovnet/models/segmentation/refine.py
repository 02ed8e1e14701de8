"""Edge-aware refinement of class probabilities: the colour guided filter (He, Sun and Tang, "Guided Image
Filtering", TPAMI 2013), with the input image as the guide.

A segmenter's logits come from a stride-4 map, so after upsampling its class boundaries are blurred over a
few pixels and do not follow the image's edges. The guided filter replaces each class probability, within
every ``(2r+1)``-pixel window, by its best linear fit in the image's colours (``q = a . I + b``): where the
window has one colour the probabilities are averaged over it, and where it holds an edge the probabilities
change where the colours change. Wu et al. ("Fast End-to-End Trainable Guided Filter", CVPR 2018) refine
segmentations the same way. The filter has no weights; it is linear in the probabilities, so the refined
probabilities of a pixel still sum to one (they are clamped at zero, where a fit can overshoot).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import UsageError


def check_refine_options(radius, eps) -> None:
    """Raise UsageError unless ``radius`` is a whole number >= 0 and ``eps`` a number > 0."""
    if type(radius) is not int or radius < 0 or not (isinstance(eps, (int, float)) and eps > 0):
        raise UsageError(f"refine_radius takes a whole number of 0 or more (0 = off) and refine_eps a number above 0, "
                         f"got {radius!r} and {eps!r}")


def _box_sum(x: torch.Tensor, radius: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of ``x`` over windows of ``2 * radius + 1`` along ``dim``, clipped at the borders (O(1) per element
    from a cumulative sum), and the number of elements in each window."""
    n = x.shape[dim]
    cumulative = x.cumsum(dim)
    before, after = list(x.shape), list(x.shape)
    before[dim], after[dim] = radius + 1, radius
    # Window i is padded[i + 2r + 1] - padded[i], with zeros before the cumulative sum and its total after it.
    padded = torch.cat([x.new_zeros(before), cumulative, cumulative.narrow(dim, n - 1, 1).expand(after)], dim)
    sums = padded.narrow(dim, 2 * radius + 1, n) - padded.narrow(dim, 0, n)
    position = torch.arange(n, device=x.device)
    counts = (position + radius + 1).clamp(max=n) - (position - radius).clamp(min=0)
    return sums, counts.to(x.dtype)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of ``x [..., H, W]`` over the ``(2r+1) x (2r+1)`` window around each pixel, clipped at the borders."""
    rows, row_counts = _box_sum(x, radius, -2)
    sums, col_counts = _box_sum(rows, radius, -1)
    return sums / (row_counts[:, None] * col_counts[None, :])


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """The colour guided filter of ``src [N, C, h, w]`` under ``guide [N, 3, H, W]`` (values in 0..1).

    ``radius``: the window's half-side in pixels of ``src``; ``eps``: the regulariser on the guide's colour
    covariance (larger smooths across weaker edges). When ``src`` is smaller than ``guide`` this is the fast
    guided filter (He and Sun, 2015): the linear coefficients are fitted at ``src``'s size, under the guide
    resized to it, and applied to the full-size guide after bilinear upsampling. Each pixel's 3x3 colour
    covariance is inverted in closed form.
    """
    full, src = guide.float(), src.float()
    guide = F.interpolate(full, size=src.shape[-2:], mode="bilinear", antialias=True) if src.shape[-2:] != full.shape[-2:] else full
    mean_i = box_mean(guide, radius)  # [N, 3, h, w]
    mean_p = box_mean(src, radius)  # [N, C, h, w]
    cov_ip = box_mean(guide[:, :, None] * src[:, None], radius) - mean_i[:, :, None] * mean_p[:, None]  # [N, 3, C, h, w]
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    products = torch.stack([guide[:, j] * guide[:, k] for j, k in pairs], 1)
    var = box_mean(products, radius) - torch.stack([mean_i[:, j] * mean_i[:, k] for j, k in pairs], 1)
    s00, s01, s02, s11, s12, s22 = (var[:, m, None] + (eps if j == k else 0.0) for m, (j, k) in enumerate(pairs))
    # The inverse of the symmetric [[s00, s01, s02], [s01, s11, s12], [s02, s12, s22]] is the adjugate / determinant.
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    cov0, cov1, cov2 = cov_ip.unbind(1)  # [N, C, h, w] each
    a = torch.stack([cov0 * c00 + cov1 * c01 + cov2 * c02, cov0 * c01 + cov1 * c11 + cov2 * c12,
                     cov0 * c02 + cov1 * c12 + cov2 * c22], 1) / det[:, None]  # [N, 3, C, h, w]
    b = mean_p - (a * mean_i[:, :, None]).sum(1)
    mean_a, mean_b = box_mean(a, radius), box_mean(b, radius)
    if mean_b.shape[-2:] != full.shape[-2:]:
        c = mean_b.shape[1]
        up = F.interpolate(torch.cat([mean_a.flatten(1, 2), mean_b], 1), size=full.shape[-2:], mode="bilinear", align_corners=False)
        mean_a, mean_b = up[:, : 3 * c].unflatten(1, (3, c)), up[:, 3 * c :]
    return (mean_a * full[:, :, None]).sum(1) + mean_b


def refine_probabilities(images: torch.Tensor, probs: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Class probabilities ``probs [N, K, h, w]`` through the guided filter under ``images [N, 3, H, W]`` (in
    0..1; ``h, w`` their size or smaller, see :func:`guided_filter`), clamped at zero and renormalised:
    ``[N, K, H, W]``."""
    refined = guided_filter(images, probs, radius, eps).clamp_min(0)
    return refined / refined.sum(1, keepdim=True).clamp_min(1e-12)
