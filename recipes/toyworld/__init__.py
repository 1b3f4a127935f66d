"""groundvlm.recipes.toyworld: the toy world, a procedural stand-in for the pretrained models and datasets the
papers use, deterministic from a seed, on a scale two CPU cores finish in minutes.

Objects (procedural or an X-Paste style folder pool), backgrounds (procedural or a BG-20k style folder),
``compose`` (PIN's composition C, as the PIN reference's ``XPaste`` dataset), ``ToyWorld`` scenes deterministic from
(seed, split, index), texts for every task and exports to ``datasets.Dataset`` / COCO json; and the toy base
models (tokenizers, LMs, vision encoders) built and cached by ``toy_asset`` (``python -m groundvlm.recipes.toyworld
build|list``; Groma's cpu-preset ones are copied from ``recipes/toy_checkpoints``). This package knows no system: the caption VL-LLM asset is trained by the VPGTrans captioner.
"""

from .backgrounds import BACKGROUND_KINDS, FolderBackgrounds, ProceduralBackgrounds
from .build import (  # noqa: E402  (after the scene API: build's helpers import it)
    ARTEFACTS,
    COMMITTED_CAPTION_VLM,
    COMMITTED_TOY_ASSETS,
    MAIN_ARTEFACTS,
    PRESETS,
    SEED,
    TOY_CHECKPOINTS,
    cache_root,
    caption_asset_metrics,
    committed_asset,
    committed_files,
    main,
    read_build_info,
    toy_asset,
)
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
    located_caption,
    location_phrase,
    pin_queries,
    referring,
    region_caption,
    vqa,
)
from .world import Scene, SceneObject, ToyWorld

__all__ = [
    "ARTEFACTS",
    "COMMITTED_CAPTION_VLM",
    "COMMITTED_TOY_ASSETS",
    "MAIN_ARTEFACTS",
    "PRESETS",
    "SEED",
    "TOY_CHECKPOINTS",
    "cache_root",
    "caption_asset_metrics",
    "committed_asset",
    "committed_files",
    "main",
    "read_build_info",
    "toy_asset",
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
    "located_caption",
    "location_phrase",
    "pin_queries",
    "pin_size_ranges",
    "referring",
    "region_caption",
    "to_coco",
    "to_hf_dataset",
    "vqa",
]
