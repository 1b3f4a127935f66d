"""groundvlm.recipes.data: the toy world (DESIGN §4) and PIN's composition function C.

Objects (procedural or an X-Paste style folder pool), backgrounds (procedural or a BG-20k style folder),
``compose`` (PIN's C, spec §B6), ``ToyWorld`` scenes deterministic from (seed, split, index), texts for
every task and exports to ``datasets.Dataset`` / COCO json.
"""

from .backgrounds import BACKGROUND_KINDS, FolderBackgrounds, ProceduralBackgrounds
from .compose import PlacedObject, compose, pin_size_ranges
from .export import TASKS, to_coco, to_hf_dataset
from .objects import (
    COLOURS,
    DEFAULT_SPLIT,
    SHAPES,
    TEXTURES,
    CategorySplit,
    FolderObjects,
    ObjectInstance,
    ProceduralObjects,
    category_name,
)
from .texts import (
    article,
    caption,
    describe,
    detection,
    grounded_caption,
    pin_queries,
    referring,
    region_caption,
    vqa,
)
from .world import Scene, SceneObject, ToyWorld

__all__ = [
    "BACKGROUND_KINDS",
    "COLOURS",
    "DEFAULT_SPLIT",
    "SHAPES",
    "TASKS",
    "TEXTURES",
    "CategorySplit",
    "FolderBackgrounds",
    "FolderObjects",
    "ObjectInstance",
    "PlacedObject",
    "ProceduralBackgrounds",
    "ProceduralObjects",
    "Scene",
    "SceneObject",
    "ToyWorld",
    "article",
    "caption",
    "category_name",
    "compose",
    "describe",
    "detection",
    "grounded_caption",
    "pin_queries",
    "pin_size_ranges",
    "referring",
    "region_caption",
    "to_coco",
    "to_hf_dataset",
    "vqa",
]
