"""Background sources for the toy world: procedural scenes at any resolution, or a folder of images.

Stand-in for BG-20k (PIN spec §B6: backgrounds are resized -- squashed -- to the model's input size).
Both sources return RGB PIL images of exactly the requested ``size=(W, H)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND_KINDS: tuple[str, ...] = ("gradient", "noise", "stripes", "clutter", "flat")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _check_size(size) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (W, H) integers, got {size!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return w, h


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A random colour pulled halfway to grey, so saturated toy objects stand out against it."""
    return 0.5 * rng.uniform(0, 255, size=3) + 0.5 * rng.uniform(60, 190)


class ProceduralBackgrounds:
    """Procedural backgrounds: linear gradients, low-frequency noise, stripes, clutter, flat + pixel noise.

    All are vectorised numpy / PIL drawing (no per-pixel Python). ``kinds`` restricts the mix;
    ``seed`` seeds the generator used when ``sample`` is called without one.
    """

    def __init__(self, seed: int = 0, kinds: tuple[str, ...] | list[str] = BACKGROUND_KINDS):
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in BACKGROUND_KINDS]
        if unknown or not kinds:
            raise ValueError(f"unknown background kinds {unknown}; choose from {list(BACKGROUND_KINDS)}")
        self.kinds = kinds
        self._rng = np.random.default_rng(seed)

    def sample(self, rng: np.random.Generator | None = None, size: tuple[int, int] = (112, 112)) -> Image.Image:
        """An RGB background of ``size`` = (W, H)."""
        rng = self._rng if rng is None else rng
        w, h = _check_size(size)
        kind = self.kinds[rng.integers(len(self.kinds))]
        return getattr(self, f"_{kind}")(rng, w, h)

    @staticmethod
    def _blend(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> Image.Image:
        """c0 + (c1 - c0) * t for a weight map t [h, w] in [0, 1] (PIL composite: one C pass)."""
        h, w = t.shape
        mask = Image.fromarray(np.rint(t * 255).astype(np.uint8), mode="L")
        lo = Image.new("RGB", (w, h), tuple(int(v) for v in np.clip(c0, 0, 255)))
        hi = Image.new("RGB", (w, h), tuple(int(v) for v in np.clip(c1, 0, 255)))
        return Image.composite(hi, lo, mask)

    def _gradient(self, rng, w, h):
        c0, c1 = _muted_colour(rng), _muted_colour(rng)
        theta = rng.uniform(0, 2 * np.pi)
        cos, sin = np.cos(theta), np.sin(theta)
        x = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :] * cos
        y = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None] * sin
        t = (x + y) / (abs(cos) + abs(sin)) + 0.5  # exactly [0, 1] across the image
        return self._blend(c0, c1, t)

    def _noise(self, rng, w, h):
        # Low-frequency noise: a tiny random grid upsampled smoothly (bicubic) to the full size.
        cells = int(rng.integers(2, 6))
        grid = 0.5 * rng.uniform(0, 255, size=(cells, cells, 3)) + 0.5 * rng.uniform(60, 190)
        small = Image.fromarray(grid.astype(np.uint8), mode="RGB")
        return small.resize((w, h), Image.BICUBIC)

    def _stripes(self, rng, w, h):
        c0, c1 = _muted_colour(rng), _muted_colour(rng)
        theta = rng.uniform(0, np.pi)
        k = 2 * np.pi / (rng.uniform(0.05, 0.25) * max(w, h))
        ax = np.arange(w, dtype=np.float32) * (k * np.cos(theta))
        ay = np.arange(h, dtype=np.float32) * (k * np.sin(theta))
        # sin(ax + ay) from 1-D tables (separable), instead of a sin over every pixel.
        t = 0.5 + 0.5 * (np.cos(ay)[:, None] * np.sin(ax)[None, :] + np.sin(ay)[:, None] * np.cos(ax)[None, :])
        return self._blend(c0, c1, np.clip(t, 0, 1))

    def _clutter(self, rng, w, h):
        # Low-contrast blobs and bars around one base colour: texture, not object look-alikes.
        base = _muted_colour(rng)
        image = Image.new("RGB", (w, h), tuple(int(v) for v in base))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(10, 30))):
            x0, y0 = rng.uniform(-0.1, 1.0, size=2) * (w, h)
            dx, dy = rng.uniform(0.03, 0.25, size=2) * (w, h)
            colour = tuple(int(v) for v in np.clip(base + rng.uniform(-25, 25, size=3), 0, 255))
            box = (x0, y0, x0 + dx, y0 + dy)
            kind = rng.integers(3)
            if kind == 0:
                draw.ellipse(box, fill=colour)
            elif kind == 1:
                draw.line(box, fill=colour, width=int(rng.integers(1, 4)))
            else:
                draw.rectangle(box, fill=colour)
        return image

    def _flat(self, rng, w, h):
        # Flat colour + Gaussian pixel noise of std sigma (grey noise, i.e. the same on every channel):
        # blending colour -/+ 4 sigma with weight 0.5 + z/8 gives colour + sigma * z.
        colour, sigma = _muted_colour(rng), rng.uniform(3, 15)
        t = np.clip(0.5 + rng.standard_normal((h, w), dtype=np.float32) / 8, 0, 1)
        return self._blend(colour - 4 * sigma, colour + 4 * sigma, t)


class FolderBackgrounds:
    """Backgrounds from a folder of images (BG-20k style), searched recursively, squashed to ``size``.

    Squashing (not cropping) follows PIN's reference (spec §B6). Errors name the folder or the file.
    """

    def __init__(self, root: str | Path, seed: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"background folder {root} does not exist or is not a folder")
        self.files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"background folder {root} has no images ({', '.join(IMAGE_SUFFIXES)})")
        self.root = root
        self._rng = np.random.default_rng(seed)

    def sample(self, rng: np.random.Generator | None = None, size: tuple[int, int] = (112, 112)) -> Image.Image:
        rng = self._rng if rng is None else rng
        w, h = _check_size(size)
        path = self.files[rng.integers(len(self.files))]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, ...)
            raise ValueError(f"cannot read background image {path}: {e}") from e
        return image.resize((w, h))
