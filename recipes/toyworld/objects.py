"""Object sources for the toy world: procedurally rendered RGBA objects and folder pools of real cut-outs.

Stand-in for PIN's X-Paste instance pool (spec §B6/§B8): every object is an RGBA image cropped tight to
the object, alpha = mask, and its own width/height is the aspect ratio r that the composer C uses.

Categories are "<colour> <shape>" (e.g. "red star"): ``len(COLOURS) * len(SHAPES)`` = 8 x 10 = 80.
Texture (plain / striped / dotted / checkered) varies per instance and is *not* part of the category.

Category split (``DEFAULT_SPLIT``) -- what each split stands for:

* ``held_out`` (16): every colour of two whole shapes, **heart** and **moon**. They play the COCO/VOC
  classes that PIN training never sees (spec §B6: the reference removes all COCO and VOC classes from
  its X-Paste training pool). Only PIN (and its baselines) are trained without them; base models (LMs,
  vision encoders, the caption VL-LLM) see every category (DESIGN §4). Use them for final tables only.
* ``validation`` (8): fixed (colour, shape) combinations of the remaining 8 shapes, one per shape and
  one per colour (the "diagonal": red circle, orange square, yellow triangle, green star, blue ring,
  purple diamond, pink hexagon, white cross). Every colour and shape of these is seen in training, only
  the combination is not: tune hyper-parameters on them, never on held-out.
* ``train`` (56): the remaining 64 - 8 combinations.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "diamond",
    "hexagon",
    "cross",
    "heart",
    "moon",
)

# Saturated, mutually distinct colours (backgrounds are muted, so objects stand out).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (35, 165, 60),
    "blue": (35, 85, 215),
    "purple": (135, 55, 185),
    "pink": (245, 125, 185),
    "white": (245, 245, 245),
}

TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

HELD_OUT_SHAPES: tuple[str, ...] = ("heart", "moon")


def category_name(colour: str, shape: str) -> str:
    """The category name of a (colour, shape) pair: ``category_name("red", "star") == "red star"``."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known colours: {sorted(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {list(SHAPES)}")
    return f"{colour} {shape}"


@dataclass(frozen=True)
class CategorySplit:
    """Disjoint category-name lists for PIN training, tuning and the held-out (zero-shot) tables."""

    train: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)

    def __post_init__(self):
        for a, b in (("train", "validation"), ("train", "held_out"), ("validation", "held_out")):
            common = set(getattr(self, a)) & set(getattr(self, b))
            if common:
                raise ValueError(f"CategorySplit.{a} and .{b} share categories: {sorted(common)}")

    def categories(self, split: str) -> list[str]:
        """The categories of ``split`` ("train", "validation", "held_out" or "all" = all three)."""
        if split == "all":
            return [*self.train, *self.validation, *self.held_out]
        if split not in ("train", "validation", "held_out"):
            raise ValueError(f"split must be 'train', 'validation', 'held_out' or 'all', got {split!r}")
        return list(getattr(self, split))


def _default_split() -> CategorySplit:
    colours = list(COLOURS)
    kept_shapes = [s for s in SHAPES if s not in HELD_OUT_SHAPES]
    # One combination per kept shape and per colour (8 shapes x 8 colours -> the diagonal).
    validation = [category_name(colours[i % len(colours)], shape) for i, shape in enumerate(kept_shapes)]
    held_out = [category_name(c, s) for s in HELD_OUT_SHAPES for c in colours]
    train = [category_name(c, s) for s in kept_shapes for c in colours if category_name(c, s) not in validation]
    return CategorySplit(train=train, validation=validation, held_out=held_out)


DEFAULT_SPLIT: CategorySplit = _default_split()


@dataclass
class ObjectInstance:
    """One sampled object: ``image`` RGBA cropped tight (alpha = mask) and its attributes.

    ``attributes`` has keys colour, shape, texture (None where the source does not know them).
    """

    image: Image.Image
    attributes: dict


# ---------------------------------------------------------------------------------------------------
# Procedural objects
# ---------------------------------------------------------------------------------------------------


def _regular_polygon(x: np.ndarray, y: np.ndarray, n: int, rotation: float) -> np.ndarray:
    """Inside test for a regular n-gon with circumradius 1 (vectorised over points)."""
    rho = np.hypot(x, y)
    phi = np.mod(np.arctan2(y, x) - rotation, 2 * np.pi / n) - np.pi / n
    # Distance to the edge along the sector's bisector direction: rho*cos(phi) <= apothem.
    return rho * np.cos(phi) <= np.cos(np.pi / n)


def _star(x: np.ndarray, y: np.ndarray, points: int = 5, inner: float = 0.45) -> np.ndarray:
    """Inside test for a star polygon (outer radius 1, inner radius ``inner``), one point up."""
    sector = 2 * np.pi / points
    rho = np.hypot(x, y)
    # Fold every point into the half-sector between an outer vertex (angle 0) and an inner one.
    phi = np.abs(np.mod(np.arctan2(y, x) + np.pi / 2, sector) - sector / 2)
    phi = sector / 2 - phi
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    ax, ay = 1.0, 0.0
    bx, by = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
    # Same side of the edge a->b as the origin.
    cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    cross_origin = (bx - ax) * (0 - ay) - (by - ay) * (0 - ax)
    return cross * cross_origin >= 0


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` on coordinates x, y in [-1, 1] (y pointing down)."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return (np.abs(x) <= 1.0) & (np.abs(y) <= 1.0)
    if shape == "triangle":
        return (y <= 1.0) & (np.abs(x) <= (y + 1.0) / 2.0)
    if shape == "star":
        return _star(x, y)
    if shape == "ring":
        r2 = x * x + y * y
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if shape == "hexagon":
        return _regular_polygon(x, y, 6, 0.0)
    if shape == "cross":
        return ((np.abs(x) <= 0.33) | (np.abs(y) <= 0.33)) & (np.abs(x) <= 1) & (np.abs(y) <= 1)
    if shape == "heart":
        # Classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, y up; scaled into the unit box.
        hx, hy = x * 1.2, -y * 1.25 + 0.15
        return (hx * hx + hy * hy - 1.0) ** 3 - hx * hx * hy**3 <= 0.0
    if shape == "moon":
        outer = x * x + y * y <= 1.0
        bite = (x - 0.5) ** 2 + (y + 0.15) ** 2 <= 0.8**2
        return outer & ~bite
    raise ValueError(f"unknown shape {shape!r}; known shapes: {list(SHAPES)}")


def _texture_mask(
    texture: str, xs: np.ndarray, ys: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray | None:
    """Where the second tone goes: bool [h, w] from pixel coordinates xs [1, w], ys [h, 1] of a canvas
    whose longer side is ``size`` px; None for plain."""
    if texture == "plain":
        return None
    period = size * rng.uniform(0.14, 0.22)
    if texture == "striped":
        theta = rng.uniform(0, np.pi)
        t = xs * np.cos(theta) + ys * np.sin(theta)
        return np.mod(t, period) < period / 2
    if texture == "dotted":
        ox, oy = rng.uniform(0, period, size=2)
        dx = np.mod(xs + ox, period) - period / 2
        dy = np.mod(ys + oy, period) - period / 2
        return dx * dx + dy * dy <= (period * 0.3) ** 2
    if texture == "checkered":
        return (np.floor(xs / period) + np.floor(ys / period)).astype(np.int64) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}; known textures: {list(TEXTURES)}")


@functools.lru_cache(maxsize=4096)
def _alpha(shape: str, w: int, h: int) -> tuple[np.ndarray, int, int]:
    """Alpha of ``shape`` stretched to a w x h canvas, cropped tight: (uint8 [h', w'], x0, y0).

    2x2 supersampling: alpha = coverage fraction, which gives anti-aliased edges. Cached (w, h are
    integers, so a few hundred entries cover every aspect ratio); read-only.
    """
    ss = 2
    xs = (np.arange(w * ss) + 0.5) / (w * ss) * 2 - 1
    ys = (np.arange(h * ss) + 0.5) / (h * ss) * 2 - 1
    inside = _shape_mask(shape, xs[None, :], ys[:, None]).astype(np.float32)
    alpha = np.rint(inside.reshape(h, ss, w, ss).mean(axis=(1, 3)) * 255).astype(np.uint8)
    cols, rows = np.flatnonzero(alpha.any(axis=0)), np.flatnonzero(alpha.any(axis=1))
    x0, y0 = int(cols[0]), int(rows[0])
    alpha = np.ascontiguousarray(alpha[y0 : rows[-1] + 1, x0 : cols[-1] + 1])
    alpha.setflags(write=False)
    return alpha, x0, y0


class ProceduralObjects:
    """Procedurally rendered RGBA objects: shapes x colours, with a random texture per instance.

    Each instance gets its own aspect ratio r (log-uniform in [1/``max_aspect``, ``max_aspect``]), a
    texture, a small colour jitter and a random stripe angle/period, rendered with 2x2 supersampled
    alpha (anti-aliased edges) at ``resolution`` px on its longer side, then cropped tight to alpha > 0.
    ``seed`` seeds the generator used when ``sample`` is called without one.
    """

    def __init__(
        self,
        seed: int = 0,
        resolution: int = 64,
        max_aspect: float = 1.6,
        colours: dict[str, tuple[int, int, int]] | None = None,
        shapes: tuple[str, ...] | list[str] | None = None,
        textures: tuple[str, ...] | list[str] | None = None,
    ):
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8 px, got {resolution}")
        if max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
        self.colours = dict(COLOURS if colours is None else colours)
        self.shapes = tuple(SHAPES if shapes is None else shapes)
        self.textures = tuple(TEXTURES if textures is None else textures)
        for s in self.shapes:
            if s not in SHAPES:
                raise ValueError(f"unknown shape {s!r}; known shapes: {list(SHAPES)}")
        for t in self.textures:
            if t not in TEXTURES:
                raise ValueError(f"unknown texture {t!r}; known textures: {list(TEXTURES)}")
        if not self.colours or not self.shapes or not self.textures:
            raise ValueError("ProceduralObjects needs at least one colour, one shape and one texture")
        self.resolution = resolution
        self.max_aspect = max_aspect
        self._rng = np.random.default_rng(seed)
        self._attributes = {f"{c} {s}": {"colour": c, "shape": s} for s in self.shapes for c in self.colours}

    @property
    def categories(self) -> list[str]:
        return list(self._attributes)

    def attributes(self, category: str) -> dict:
        """``{"colour": ..., "shape": ...}`` of a category."""
        if category not in self._attributes:
            raise ValueError(f"unknown category {category!r}; e.g. {self.categories[:3]}")
        return dict(self._attributes[category])

    def sample(self, category: str, rng: np.random.Generator | None = None) -> Image.Image:
        """An RGBA instance of ``category``, cropped tight to the object (alpha = mask)."""
        return self.sample_instance(category, rng).image

    def sample_instance(self, category: str, rng: np.random.Generator | None = None) -> ObjectInstance:
        """Like ``sample`` but also returns the instance attributes (colour, shape, texture)."""
        attrs = self.attributes(category)
        rng = self._rng if rng is None else rng
        texture = self.textures[rng.integers(len(self.textures))]
        aspect = float(np.exp(rng.uniform(-np.log(self.max_aspect), np.log(self.max_aspect))))
        image = self.render(attrs["shape"], attrs["colour"], texture, aspect, rng)
        return ObjectInstance(image=image, attributes={**attrs, "texture": texture})

    def render(self, shape: str, colour: str, texture: str, aspect: float, rng: np.random.Generator) -> Image.Image:
        """Render one instance; ``aspect`` = width / height of the drawing canvas before cropping."""
        if colour not in self.colours:
            raise ValueError(f"unknown colour {colour!r}; known colours: {sorted(self.colours)}")
        res = self.resolution
        w, h = (res, max(2, round(res / aspect))) if aspect >= 1 else (max(2, round(res * aspect)), res)
        alpha, x0, y0 = _alpha(shape, w, h)
        ch, cw = alpha.shape
        base = np.clip(np.asarray(self.colours[colour], dtype=np.float32) + rng.uniform(-12, 12, size=3), 0, 255)
        # Pixel coordinates of the cropped canvas, as broadcastable row / column vectors.
        px = np.arange(x0, x0 + cw, dtype=np.float32)[None, :]
        py = np.arange(y0, y0 + ch, dtype=np.float32)[:, None]
        second = _texture_mask(texture, px, py, max(w, h), rng)
        # Gentle vertical shading so plain objects are not perfectly flat.
        shade = (1.0 - 0.12 * (py / max(h - 1, 1)))[..., None]  # [ch, 1, 1]
        if second is None:
            rgb = shade * base
        else:
            # The second tone is a darker shade of the same colour, so the colour name stays true.
            rgb = shade * np.where(second[..., None], base * 0.55, base)
        rgba = np.empty((ch, cw, 4), dtype=np.uint8)
        rgba[..., :3] = np.rint(rgb)
        rgba[..., 3] = alpha
        return Image.fromarray(rgba, mode="RGBA")


# ---------------------------------------------------------------------------------------------------
# Folder pools (X-Paste style)
# ---------------------------------------------------------------------------------------------------


def load_rgba_cutout(path: Path) -> Image.Image:
    """Open an RGBA cut-out and crop it tight to its alpha; errors name the file."""
    try:
        with Image.open(path) as im:
            im.load()
            image = im
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError)
        raise ValueError(f"cannot read object image {path}: {e}") from e
    if image.mode == "P" and "transparency" in image.info or image.mode == "LA":
        image = image.convert("RGBA")
    if image.mode != "RGBA":
        raise ValueError(
            f"object image {path} has mode {image.mode!r}; object cut-outs must be RGBA (alpha = object mask)"
        )
    bbox = image.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError(f"object image {path} is fully transparent (empty alpha mask)")
    return image.crop(bbox)


class FolderObjects:
    """An X-Paste style object pool read from disk; same interface as ``ProceduralObjects``.

    ``root`` is either
    * a folder with one sub-folder per category, ``root/<category name>/*.png`` (RGBA cut-outs), or
    * a json index ``{category: [png path, ...]}`` (like X-Paste's ``LVIS_instance_pools.json``), paths
      relative to the json's folder (or absolute); pass the json file, or a folder holding exactly one
      ``*.json`` and no category sub-folders.

    Colour and shape are unknown for real cut-outs: ``attributes`` returns them as None.
    """

    def __init__(self, root: str | Path, seed: int = 0):
        root = Path(root)
        if not root.exists():
            raise ValueError(f"object pool {root} does not exist")
        if root.is_file():
            self._pool = self._from_index(root)
        else:
            subdirs = sorted(p for p in root.iterdir() if p.is_dir())
            jsons = sorted(root.glob("*.json"))
            if not subdirs and len(jsons) == 1:
                self._pool = self._from_index(jsons[0])
            elif not subdirs:
                raise ValueError(
                    f"object pool {root} is empty: expected sub-folders <category>/*.png or one json index"
                )
            else:
                self._pool = {}
                for d in subdirs:
                    pngs = sorted(d.glob("*.png"))
                    if not pngs:
                        raise ValueError(f"object pool category folder {d} has no .png files")
                    self._pool[d.name] = pngs
        self._rng = np.random.default_rng(seed)

    @staticmethod
    def _from_index(path: Path) -> dict[str, list[Path]]:
        try:
            index = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read object pool index {path}: {e}") from e
        if not isinstance(index, dict) or not index:
            raise ValueError(f"object pool index {path} must be a non-empty json object {{category: [paths]}}")
        pool = {}
        for category, files in index.items():
            if not isinstance(files, list) or not files:
                raise ValueError(f"object pool index {path}: category {category!r} has no png paths")
            resolved = [Path(f) if Path(f).is_absolute() else path.parent / f for f in files]
            missing = [str(p) for p in resolved if not p.is_file()]
            if missing:
                raise ValueError(f"object pool index {path}: missing files for {category!r}: {missing[:3]}")
            pool[str(category)] = resolved
        return pool

    @property
    def categories(self) -> list[str]:
        return list(self._pool)

    def attributes(self, category: str) -> dict:
        if category not in self._pool:
            raise ValueError(f"unknown category {category!r}; e.g. {self.categories[:3]}")
        return {"colour": None, "shape": None}

    def files(self, category: str) -> list[Path]:
        """The cut-out files of ``category``."""
        self.attributes(category)
        return list(self._pool[category])

    def sample(self, category: str, rng: np.random.Generator | None = None) -> Image.Image:
        return self.sample_instance(category, rng).image

    def sample_instance(self, category: str, rng: np.random.Generator | None = None) -> ObjectInstance:
        files = self.files(category)
        rng = self._rng if rng is None else rng
        image = load_rgba_cutout(files[rng.integers(len(files))])
        return ObjectInstance(image=image, attributes={"colour": None, "shape": None, "texture": None})
