"""The composition function C(I_b, r, a_max, s_min, s_max, o_max) of PIN's reference (its ``XPaste`` dataset).

Pastes up to ``a_max`` RGBA objects onto a background on a grid of ``grid_size`` x ``grid_size`` cells,
following the reference ``XPaste`` dataset (``sample_size``, ``possible_locations``,
``compute_overlap_ratio`` with ``overlap_constraint_for_both``, ``overlay_image``):

* with k objects in the image, every object's **longer side** is ``randint(s_min[k-1], s_max[k-1] - 1)``
  cells (both ends inclusive) and the other side ``max(1, round(longer / r))`` for the object's own aspect
  ratio r = width / height (Python's ``round``, i.e. half-to-even, as the reference);
* a side of ``size`` spans ``size + 1`` cells (grid box ``[g, g + size]`` inclusive); the object is
  resized to exactly that footprint (PIL's default resampling) and pasted with its alpha as the mask;
* the first object goes to a uniformly random position fully inside the image; every further object
  goes to a uniformly random position among *all* integer grid offsets (exhaustive search) that lie
  fully inside the image and whose **sum over the already placed boxes** of the overlap ratio
  ``max(inter / area_new, inter / area_existing)`` is ``<= o_max``;
* if no position exists, the size is re-drawn, up to ``max_tries`` draws in all; after that the object
  gets the **minimum** size at a uniformly random position (the fallback).

The ground-truth box of an object is its grid box (pixel boxes are multiples of the cell size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# The toy world's grid when none is given: 16 cells per side, as the PIN reference composes its scenes (a
# system's recipe passes its own grid, e.g. PIN's `--grid_size`).
GRID_SIZE = 16
# PIN's per-object-count size factors (reference defaults for 1, 2, 3 objects): s = round(grid * factor).
PIN_MIN_SIZE_FACTORS: tuple[float, ...] = (0.3, 0.2, 0.1)
PIN_MAX_SIZE_FACTORS: tuple[float, ...] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class PlacedObject:
    """One pasted object.

    name: the object's name (category) as given to ``compose``.
    box: (x1, y1, x2, y2) pixel box of the footprint, x2/y2 exclusive: ``((gx2 + 1) * cell_w, ...)``.
    grid_box: (gx1, gy1, gx2, gy2) inclusive grid cells.
    fallback: True when placed by the fallback path (minimum size, random position), which can violate
        the o_max overlap constraint.
    """

    name: str
    box: tuple[int, int, int, int]
    grid_box: tuple[int, int, int, int]
    fallback: bool = False


def pin_size_ranges(
    grid_size: int = GRID_SIZE,
    min_factors: tuple[float, ...] = PIN_MIN_SIZE_FACTORS,
    max_factors: tuple[float, ...] = PIN_MAX_SIZE_FACTORS,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """PIN's per-count size ranges in cells: ``s = round(grid_size * factor)``; (5,3,2), (16,16,16) at 16."""
    return tuple(round(grid_size * f) for f in min_factors), tuple(round(grid_size * f) for f in max_factors)


def _validate(background, objects, grid_size, a_max, s_min, s_max, o_max, max_tries):
    if not isinstance(background, Image.Image):
        raise TypeError(f"background must be a PIL image, got {type(background).__name__}")
    if not isinstance(grid_size, (int, np.integer)) or grid_size < 1:
        raise ValueError(f"grid_size must be a positive integer, got {grid_size!r}")
    w, h = background.size
    if w % grid_size or h % grid_size:
        raise ValueError(
            f"background size {w}x{h} is not divisible by grid_size={grid_size}: every grid cell must be a "
            f"whole number of pixels (e.g. 112 or 224 px for 16 cells)"
        )
    if a_max < 1:
        raise ValueError(f"a_max must be >= 1, got {a_max}")
    if len(objects) > a_max:
        raise ValueError(f"got {len(objects)} objects but a_max={a_max} (at most a_max objects per image)")
    if len(s_min) < a_max or len(s_max) < a_max:
        raise ValueError(
            f"s_min and s_max need one size per object count 1..a_max={a_max}, got s_min={tuple(s_min)}, "
            f"s_max={tuple(s_max)}"
        )
    for k, (lo, hi) in enumerate(zip(s_min[:a_max], s_max[:a_max]), start=1):
        if lo < 1:
            raise ValueError(f"s_min[{k - 1}]={lo} (for {k} objects) must be >= 1 cell")
        if hi > grid_size:
            raise ValueError(f"s_max[{k - 1}]={hi} (for {k} objects) must be <= grid_size={grid_size}")
        if lo > hi - 1:
            raise ValueError(
                f"s_min[{k - 1}]={lo} > s_max[{k - 1}] - 1 = {hi - 1} (for {k} objects): the longer side is "
                f"drawn from randint(s_min, s_max - 1), which is empty"
            )
    if o_max < 0:
        raise ValueError(f"o_max must be >= 0, got {o_max}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    for i, item in enumerate(objects):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"objects[{i}] must be a (name, RGBA PIL image) pair, got {type(item).__name__}")
        name, image = item
        if not isinstance(image, Image.Image) or image.mode != "RGBA":
            mode = getattr(image, "mode", type(image).__name__)
            raise ValueError(f"objects[{i}] ({name!r}) must be an RGBA PIL image (alpha = mask), got {mode}")
        if min(image.size) < 1:
            raise ValueError(f"objects[{i}] ({name!r}) has an empty image of size {image.size}")


def sample_size(ratio: float, s_lo: int, s_hi: int, rng: np.random.Generator) -> tuple[int, int]:
    """(size_x, size_y) in cells: longer side ``randint(s_lo, s_hi - 1)``, other from ``ratio`` = w / h."""
    if ratio >= 1:
        size_x = int(rng.integers(s_lo, s_hi))  # numpy's high is exclusive: [s_lo, s_hi - 1]
        size_y = max(1, round(size_x / ratio))
    else:
        size_y = int(rng.integers(s_lo, s_hi))
        size_x = max(1, round(size_y * ratio))
    return size_x, size_y


def overlap_sum(size: tuple[int, int], grid_size: int, existing: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Summed overlap ratio of every inside position of a ``size`` box against ``existing`` grid boxes.

    Returns [ny, nx] float64 where entry (y, x) is for the grid box (x, y, x + size_x, y + size_y),
    x in 0..grid_size-1-size_x, y in 0..grid_size-1-size_y. Each term is
    ``max(inter / area_existing, inter / area_new)`` (the reference's ``overlap_constraint_for_both``),
    summed in the order of ``existing`` like the reference's Python ``sum`` (same float results).
    """
    sx, sy = size
    x1 = np.arange(grid_size - sx)
    y1 = np.arange(grid_size - sy)
    x2, y2 = x1 + sx + 1, y1 + sy + 1  # exclusive ends, in cells
    area_new = (sx + 1) * (sy + 1)
    total = np.zeros((len(y1), len(x1)))
    for bx1, by1, bx2, by2 in existing:
        ix = np.clip(np.minimum(x2, bx2 + 1) - np.maximum(x1, bx1), 0, None)
        iy = np.clip(np.minimum(y2, by2 + 1) - np.maximum(y1, by1), 0, None)
        inter = (iy[:, None] * ix[None, :]).astype(np.float64)
        area_b = (bx2 - bx1 + 1) * (by2 - by1 + 1)
        total = total + np.maximum(inter / area_b, inter / area_new)
    return total


def compose(
    background: Image.Image,
    objects: list[tuple[str, Image.Image]],
    rng: np.random.Generator,
    *,
    grid_size: int = GRID_SIZE,
    a_max: int = 3,
    s_min: tuple[int, ...] = (5, 3, 2),
    s_max: tuple[int, ...] = (16, 16, 16),
    o_max: float = 0.5,
    max_tries: int = 10,
) -> tuple[Image.Image, list[PlacedObject]]:
    """Paste ``objects`` (name, RGBA cut-out) onto ``background`` with PIN's composition C.

    background: PIL image (W, H), both divisible by ``grid_size``; converted to RGB, not modified.
    objects: up to ``a_max`` (name, RGBA image cropped to the object); pasted in order (later on top).
    s_min / s_max: per object count k, the size range in cells is ``s_min[k-1] .. s_max[k-1] - 1``.
    Returns the RGB image (W, H) and one ``PlacedObject`` per input object, in input order.
    """
    _validate(background, objects, grid_size, a_max, s_min, s_max, o_max, max_tries)
    image = background.convert("RGB") if background.mode != "RGB" else background.copy()
    w, h = image.size
    cell_w, cell_h = w // grid_size, h // grid_size
    k = len(objects)
    placed: list[PlacedObject] = []
    if k == 0:
        return image, placed
    lo, hi = int(s_min[k - 1]), int(s_max[k - 1])
    boxes: list[tuple[int, int, int, int]] = []
    for name, overlay in objects:
        ratio = overlay.size[0] / overlay.size[1]
        fallback = False
        if not boxes:
            sx, sy = sample_size(ratio, lo, hi, rng)
            gx = int(rng.integers(0, grid_size - sx))
            gy = int(rng.integers(0, grid_size - sy))
        else:
            found = None
            for _ in range(max_tries):
                sx, sy = sample_size(ratio, lo, hi, rng)
                valid = overlap_sum((sx, sy), grid_size, boxes) <= o_max
                if valid.any():
                    # x-major order like the reference's nested loops; the choice is uniform anyway.
                    locations = np.argwhere(valid.T)
                    found = locations[rng.integers(len(locations))]
                    break
            if found is None:
                # Reference fallback: the minimum size at a random position, with NO overlap check --
                # this can violate o_max (kept for parity with PIN's data distribution).
                sx, sy = sample_size(ratio, lo, lo + 1, rng)
                gx = int(rng.integers(0, grid_size - sx))
                gy = int(rng.integers(0, grid_size - sy))
                fallback = True
            else:
                gx, gy = int(found[0]), int(found[1])
        grid_box = (gx, gy, gx + sx, gy + sy)
        boxes.append(grid_box)
        footprint = (cell_w * (sx + 1), cell_h * (sy + 1))
        resized = overlay.resize(footprint)  # PIL default resampling, as the reference
        image.paste(resized, (gx * cell_w, gy * cell_h), resized)
        box = (gx * cell_w, gy * cell_h, (gx + sx + 1) * cell_w, (gy + sy + 1) * cell_h)
        placed.append(PlacedObject(name=name, box=box, grid_box=grid_box, fallback=fallback))
    return image, placed
