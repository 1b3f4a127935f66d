"""The toy world: deterministic scenes of pasted objects, the stand-in for PIN's synthetic X-Paste data.

``ToyWorld(seed, split).scene(index)`` draws a background, a number of objects k (uniform in
``num_objects``), k *distinct* categories of the split, one instance of each, and composes them with
PIN's C (``compose.compose``, size ranges ``pin_size_ranges(grid_size)``). Every scene is a pure function of
(seed, split, index): the generator is ``np.random.default_rng(SeedSequence([seed, split_id, index]))``.

Deliberate difference from the reference: categories are drawn without replacement within a scene. The
reference draws with replacement from ~1,000 LVIS classes, where a repeat is rare; with the toy world's
~60 categories repeats would be common and make prompts like "a red star" ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .backgrounds import ProceduralBackgrounds
from .compose import GRID_SIZE, compose, pin_size_ranges
from .objects import DEFAULT_SPLIT, CategorySplit, ProceduralObjects

# The toy world's image side: 112 px, 16 cells of 7 px (one patch of the toy ViTs per cell).
IMAGE_SIZE = 112

SPLITS: tuple[str, ...] = ("train", "validation", "held_out", "all")


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    name: category name ("red star"); colour / shape / texture: its attributes (None for folder pools).
    box: (x1, y1, x2, y2) pixel box, x2/y2 exclusive (multiples of the grid cell).
    grid_box: (gx1, gy1, gx2, gy2) inclusive grid cells (what PIN's GridCodec encodes).
    fallback: placed by C's fallback (minimum size, random position; may overlap more than o_max).
    """

    name: str
    colour: str | None
    shape: str | None
    texture: str | None
    box: tuple[int, int, int, int]
    grid_box: tuple[int, int, int, int]
    fallback: bool = False

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass
class Scene:
    """A composed image (RGB, image_size x image_size) and its objects in paste order (later on top)."""

    index: int
    image: Image.Image
    objects: list[SceneObject] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


class ToyWorld:
    """Deterministic toy scenes of one category split.

    seed: world seed; split: "train" | "validation" | "held_out" | "all" (of ``category_split``);
    image_size: square side in px (divisible by grid_size); objects / backgrounds: sources with the
    ``ProceduralObjects`` / ``ProceduralBackgrounds`` interface (defaults: procedural, seeded by ``seed``);
    num_objects: (min, max) objects per scene, max is C's a_max.
    With a folder pool whose category names are not in ``category_split``, use ``split="all"`` (then
    every category of the pool is used) or pass a ``CategorySplit`` of the pool's names.
    """

    def __init__(
        self,
        seed: int = 0,
        image_size: int = IMAGE_SIZE,
        grid_size: int = GRID_SIZE,
        split: str = "train",
        objects=None,
        backgrounds=None,
        num_objects: tuple[int, int] = (1, 3),
        category_split: CategorySplit = DEFAULT_SPLIT,
        o_max: float = 0.5,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if image_size % grid_size:
            raise ValueError(f"image_size={image_size} must be divisible by grid_size={grid_size}")
        lo, hi = num_objects
        if not (1 <= lo <= hi):
            raise ValueError(f"num_objects must be (min, max) with 1 <= min <= max, got {num_objects}")
        self.seed = int(seed)
        self.split = split
        self.image_size = image_size
        self.grid_size = grid_size
        self.num_objects = (int(lo), int(hi))
        self.o_max = o_max
        self.objects = ProceduralObjects(seed=seed) if objects is None else objects
        self.backgrounds = ProceduralBackgrounds(seed=seed) if backgrounds is None else backgrounds
        self.category_split = category_split
        self.s_min, self.s_max = pin_size_ranges(grid_size, *_size_factors(hi))

        available = self.objects.categories
        if split == "all":
            self.categories = list(available)
        else:
            wanted = set(category_split.categories(split))
            self.categories = [c for c in available if c in wanted]
        if not self.categories:
            raise ValueError(
                f"split {split!r} has no categories of this object source (e.g. {available[:3]}): "
                f"use split='all' or a CategorySplit with the source's category names"
            )
        self._split_id = SPLITS.index(split)

    def __repr__(self) -> str:
        return (
            f"ToyWorld(seed={self.seed}, split={self.split!r}, image_size={self.image_size}, "
            f"grid_size={self.grid_size}, categories={len(self.categories)}, num_objects={self.num_objects})"
        )

    def rng(self, index: int) -> np.random.Generator:
        """The generator of scene ``index``: a pure function of (seed, split, index)."""
        if index < 0:
            raise ValueError(f"scene index must be >= 0, got {index}")
        return np.random.default_rng(np.random.SeedSequence([self.seed, self._split_id, int(index)]))

    def text_rng(self, index: int) -> np.random.Generator:
        """A generator for the texts of scene ``index`` (a separate stream: texts never change scenes)."""
        if index < 0:
            raise ValueError(f"scene index must be >= 0, got {index}")
        return np.random.default_rng(np.random.SeedSequence([self.seed, self._split_id, int(index), 1]))

    def scene(self, index: int) -> Scene:
        rng = self.rng(index)
        background = self.backgrounds.sample(rng, size=(self.image_size, self.image_size))
        k = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
        k = min(k, len(self.categories))
        chosen = rng.choice(len(self.categories), size=k, replace=False)
        names = [self.categories[i] for i in chosen]
        instances = [self.objects.sample_instance(name, rng) for name in names]
        image, placed = compose(
            background,
            [(name, inst.image) for name, inst in zip(names, instances)],
            rng,
            grid_size=self.grid_size,
            a_max=self.num_objects[1],
            s_min=self.s_min,
            s_max=self.s_max,
            o_max=self.o_max,
        )
        objects = [
            SceneObject(
                name=p.name,
                colour=inst.attributes.get("colour"),
                shape=inst.attributes.get("shape"),
                texture=inst.attributes.get("texture"),
                box=p.box,
                grid_box=p.grid_box,
                fallback=p.fallback,
            )
            for p, inst in zip(placed, instances)
        ]
        return Scene(index=int(index), image=image, objects=objects)

    __getitem__ = scene


def _render_one(args) -> tuple[np.ndarray, list[SceneObject]]:
    world, index = args
    scene = world.scene(index)
    return np.asarray(scene.image.convert("RGB"), dtype=np.uint8), scene.objects


def render_scenes(world: ToyWorld, indices, workers: int = 1) -> tuple[np.ndarray, list[list[SceneObject]]]:
    """Render scenes `indices` of `world` once: (uint8 RGB images `[N, S, S, 3]`, each scene's objects).

    The one way datasets of toy scenes get their images: a dataset renders its fixed scenes here when it is built and
    reads them from the array in every epoch. `workers` > 1 renders in a process pool (GPU presets render tens of
    thousands of scenes); the result does not depend on `workers`.
    """
    from tqdm.auto import tqdm

    jobs = [(world, int(i)) for i in indices]
    if not jobs:
        raise ValueError("render_scenes needs at least one scene index")
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_render_one, jobs, chunksize=64), total=len(jobs), desc="render", unit="img"))
    else:
        results = [_render_one(job) for job in tqdm(jobs, desc="render", unit="img", leave=False)]
    return np.stack([r[0] for r in results]), [r[1] for r in results]


def _size_factors(a_max: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """PIN's size factors for 1..a_max objects: the PIN reference's 9-entry defaults.

    The reference ships factors for up to 9 objects: min (0.3, 0.2, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.1) and
    max (1.0, 1.0, 1.0, 1.0, 0.5, 0.4, 0.4, 0.4, 0.4); the published runs use a_max = 3.
    """
    min_f = (0.3, 0.2, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.1)
    max_f = (1.0, 1.0, 1.0, 1.0, 0.5, 0.4, 0.4, 0.4, 0.4)
    if a_max > len(min_f):
        raise ValueError(f"num_objects max={a_max} is above the 9 objects PIN's size factors are defined for")
    return min_f[:a_max], max_f[:a_max]
