"""Canny edges in numpy: the one ControlNet preprocessor zitops runs itself (docs/features.md "ControlNet").

The Union ControlNet reads a ready control map (white edges on black for
canny). Depth and pose maps need models of their own (MiDaS, OpenPose), which
zitops does not ship, so for those a client sends the map; canny is cheap
arithmetic, so a client may send a photo and ask for its edges. The steps are
the classic ones: Gaussian blur, Sobel gradients, thinning to the gradient's
local maxima, two thresholds, and hysteresis (weak edges kept where they touch
strong ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np

HYSTERESIS_ROUNDS = 256
"""Dilation rounds that grow strong edges along weak ones; a weak chain longer than this is cut there."""


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(img, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def _thin(mag: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep a pixel only where its magnitude is the largest across the edge (non-maximum suppression)."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45).astype(np.int8) % 4  # 0: horizontal gradient, 1: 45, 2: vertical, 3: 135
    p = np.pad(mag, 1)
    h, w = mag.shape
    neighbours = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)), 3: ((1, -1), (-1, 1))}
    keep = np.zeros_like(mag, dtype=bool)
    for index, ((dy1, dx1), (dy2, dx2)) in neighbours.items():
        a = p[1 + dy1:1 + dy1 + h, 1 + dx1:1 + dx1 + w]
        b = p[1 + dy2:1 + dy2 + h, 1 + dx2:1 + dx2 + w]
        keep |= (sector == index) & (mag >= a) & (mag >= b)
    return np.where(keep, mag, 0.0)


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = mask.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def canny(image: Any, low: float = 100.0, high: float = 200.0) -> Any:
    """A PIL image's canny edge map (white edges on black, RGB), thresholds on a 0..255 gradient scale."""
    from PIL import Image, ImageFilter

    gray = np.asarray(image.convert("L").filter(ImageFilter.GaussianBlur(1.4)), dtype=np.float32)
    gx, gy = _sobel(gray)
    # OpenCV's thresholds are on the L1 Sobel magnitude of 0..255 pixels, which this matches.
    thin = _thin(np.abs(gx) + np.abs(gy), gx, gy)
    low, high = min(low, high), max(low, high)
    weak = thin >= low
    edges = thin >= high
    for _ in range(HYSTERESIS_ROUNDS):
        grown = _dilate(edges) & weak
        if np.array_equal(grown, edges):
            break
        edges = grown
    return Image.fromarray((edges * 255).astype(np.uint8)).convert("RGB")
