"""PIN's synthetic training data: pasted-object scenes, the reference curriculum, a collator, a feature cache.

The PIN reference draws a fresh composition for every sample of every epoch (160 epochs × 60k) and
supervises one random pasted object per sample; the first quarter of the epochs uses exactly 3 objects and
also supervises the object's name ("name reconstruction"), the rest 1–3 objects and the box only.

By default the scenes of a run are a fixed pool, so the frozen vision encoder's outputs can be computed once per
image (`build_feature_cache`) and a training step costs the fusion network and the LLM only. Two pools of equal
size: the curriculum pool (exactly `curriculum_num_objects` objects per image) for the first
`name_reconstruction_epochs` passes, the main pool (whatever the scene source draws: 1–3 objects) after.
Every pass re-draws which object of each image is supervised, deterministically from (seed, pass, image), so a
resumed run sees the same samples. `PinTrainingSet` lays the passes out as one long index range and
`EpochBlockSampler` shuffles within each pass only, so the curriculum order survives shuffling.
With `fresh_scenes`, `FreshSceneSet` composes a new scene for every sample instead (the reference's regime; the
vision encoder then runs on every step).

A scene source is anything with `scene(i)` returning an object with `.image` (RGB PIL, S×S) and `.objects`
(each with `.name` and `.box` = `[x1, y1, x2, y2]` pixels on that image): the toy world's `ToyWorld`, or the
same composer over an X-Paste pool and a background folder.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from groundvlm.recipes import toyworld

logger = logging.getLogger("groundvlm")

REFERRAL_WORDS = ("left", "right", "top", "bottom")


@dataclass
class ScenePool:
    """A fixed set of composed scenes.

    Attributes:
        images: `(N, S, S, 3)` uint8 RGB.
        objects: per image, a list of `(name, [x1, y1, x2, y2])` pixel boxes on the S×S image.
    """

    images: np.ndarray
    objects: list[list[tuple[str, list[float]]]]

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def boxes(self) -> list[list[float]]:
        """Every object box of the pool (the random baseline draws from these)."""
        return [box for objs in self.objects for _, box in objs]

    def categories(self) -> set[str]:
        return {name for objs in self.objects for name, _ in objs}


def _seed_int(*parts) -> int:
    """A stable 64-bit seed from parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def checked_scene(scene, index: int, allowed: set[str] | frozenset[str]):
    """`(image (S, S, 3) uint8, [(name, [x1, y1, x2, y2]), ...])` of a source's scene `index`, after checking what
    every PIN training scene must be: an RGB image, at least one object, only categories in `allowed` (this is where
    "held-out categories never reach PIN training" is enforced, whatever the source does)."""
    image = scene.image
    if getattr(image, "mode", "RGB") != "RGB":
        raise ValueError(f"scene {index} has a {image.mode} image; scene sources must give RGB images")
    objects = []
    for obj in scene.objects:
        if obj.name not in allowed:
            raise ValueError(
                f"scene {index} holds {obj.name!r}, outside the training categories "
                "(held-out categories must never reach PIN training)"
            )
        objects.append((obj.name, [float(v) for v in obj.box]))
    if not objects:
        raise ValueError(f"scene {index} has no objects")
    return np.array(image, dtype=np.uint8), objects


def build_pool(
    source,
    count: int,
    allowed_categories: Iterable[str],
    num_objects: int | None = None,
    start: int = 0,
    max_draws_per_scene: int = 50,
    progress: bool = False,
) -> ScenePool:
    """`count` scenes from `source.scene(start), scene(start + 1), ...`.

    Args:
        source: a scene source (see the module docstring).
        allowed_categories: every object name must be one of these; anything else is an error (this is where
            "held-out categories never reach PIN training" is enforced, whatever the source does).
        num_objects: keep only scenes with exactly this many objects (the curriculum pool); None keeps all.
        max_draws_per_scene: give up (ValueError) when the source yields that many scenes in a row without the
            requested object count.
    """
    if count < 1:
        raise ValueError(f"a scene pool needs count >= 1, got {count}")
    allowed = set(allowed_categories)
    images, objects = [], []
    index, misses = start, 0
    iterator = range(count)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"composing scenes ({num_objects or 'any'} objects)", leave=False)
    for _ in iterator:
        while True:
            scene = source.scene(index)
            index += 1
            if num_objects is None or len(scene.objects) == num_objects:
                misses = 0
                break
            misses += 1
            if misses >= max_draws_per_scene:
                raise ValueError(
                    f"the scene source drew {misses} scenes in a row without exactly {num_objects} objects; "
                    "lower curriculum_num_objects or raise the source's maximum object count"
                )
        image, objs = checked_scene(scene, index - 1, allowed)
        images.append(image)
        objects.append(objs)
    sizes = {im.shape for im in images}
    if len(sizes) != 1:
        raise ValueError(f"scene images differ in size: {sorted(sizes)}")
    return ScenePool(images=np.stack(images), objects=objects)


def referral_name(objects: list[tuple[str, list[float]]], index: int, rng: np.random.Generator) -> str | None:
    """A positional referring name for object `index` ("red star on the left"), when it is the unique extreme
    object in some direction among two or more objects; None otherwise. (The reference's `pos_img_referral`.)"""
    if len(objects) < 2:
        return None
    centres = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for _, b in objects])
    words = []
    for word, axis, pick in (
        ("left", 0, np.argmin),
        ("right", 0, np.argmax),
        ("top", 1, np.argmin),
        ("bottom", 1, np.argmax),
    ):
        values = centres[:, axis]
        extreme = values[pick(values)]
        if pick(values) == index and np.sum(values == extreme) == 1:
            words.append(word)
    if not words:
        return None
    return f"{objects[index][0]} on the {words[rng.integers(len(words))]}"


class PinTrainingSet(Dataset):
    """All passes over the scene pools as one index range: item `k` is pass `k // N`, image `k % N`.

    Args:
        curriculum_pool / main_pool: `ScenePool`s of equal size N (the curriculum pool may be None when
            `name_reconstruction_epochs` is 0).
        epochs: passes over the pool (the reference's epochs).
        name_reconstruction_epochs: the first passes use the curriculum pool and supervise the name too.
        seed: seeds the choice of the supervised object (per pass and image).
        curriculum_features / main_features: optional `(N, P, D)` cached vision-encoder outputs of the pools;
            items then carry `vision_embeds` and the collator passes them instead of pixels.
        referral_probability: probability that a box-only sample names its object positionally (RefCOCO-style).

    Items: `{"image": (S, S, 3) uint8, "name": str, "box": [x1, y1, x2, y2], "reconstruct_name": bool,
    "vision_embeds": (P, D) tensor (when cached)}`.
    """

    def __init__(
        self,
        main_pool: ScenePool,
        epochs: int,
        curriculum_pool: ScenePool | None = None,
        name_reconstruction_epochs: int = 0,
        seed: int = 0,
        main_features: torch.Tensor | None = None,
        curriculum_features: torch.Tensor | None = None,
        referral_probability: float = 0.0,
    ):
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if not 0 <= name_reconstruction_epochs <= epochs:
            raise ValueError(f"name_reconstruction_epochs must be in [0, {epochs}], got {name_reconstruction_epochs}")
        if name_reconstruction_epochs and curriculum_pool is None:
            raise ValueError("name_reconstruction_epochs > 0 needs a curriculum pool")
        if curriculum_pool is not None and len(curriculum_pool) != len(main_pool):
            raise ValueError(f"the pools differ in size: {len(curriculum_pool)} vs {len(main_pool)}")
        for pool, feats, what in ((main_pool, main_features, "main"), (curriculum_pool, curriculum_features, "curr")):
            if feats is not None and (pool is None or feats.shape[0] != len(pool)):
                raise ValueError(f"{what} features have {feats.shape[0]} rows for a pool of {len(pool or [])} images")
        if name_reconstruction_epochs and (main_features is None) != (curriculum_features is None):
            raise ValueError("cache the features of both pools or of neither")
        if not 0.0 <= referral_probability <= 1.0:
            raise ValueError(f"referral_probability must be in [0, 1], got {referral_probability}")
        self.main_pool, self.curriculum_pool = main_pool, curriculum_pool
        self.main_features, self.curriculum_features = main_features, curriculum_features
        self.epochs = epochs
        self.name_reconstruction_epochs = name_reconstruction_epochs
        self.seed = seed
        self.referral_probability = referral_probability
        self.pool_size = len(main_pool)

    def __len__(self) -> int:
        return self.epochs * self.pool_size

    def phase(self, epoch: int) -> str:
        """ "curriculum" (3 objects, name reconstruction) or "main" (1–3 objects, box only)."""
        return "curriculum" if epoch < self.name_reconstruction_epochs else "main"

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < len(self):
            raise IndexError(k)
        epoch, i = divmod(int(k), self.pool_size)
        curriculum = self.phase(epoch) == "curriculum"
        pool = self.curriculum_pool if curriculum else self.main_pool
        features = self.curriculum_features if curriculum else self.main_features
        rng = np.random.default_rng(_seed_int(self.seed, epoch, i))
        objects = pool.objects[i]
        j = int(rng.integers(len(objects)))  # one random pasted object per sample, as the reference
        name, box = objects[j]
        if not curriculum and self.referral_probability and rng.random() < self.referral_probability:
            name = referral_name(objects, j, rng) or name
        item = {"image": pool.images[i], "name": name, "box": list(box), "reconstruct_name": curriculum}
        if features is not None:
            item["vision_embeds"] = features[i]
        return item


class FreshSceneSet(Dataset):
    """A new composition for every training sample, as the PIN reference draws them (no fixed pool).

    Item `k` composes scene `k` of the source on the fly (in the data-loader workers): the first
    `curriculum_samples` items come from the curriculum stream (exactly `curriculum_num_objects` objects, the name
    supervised too), the rest from the main stream (whatever the source draws, box only). Everything is a function
    of (source seed, `seed`, k), so a resumed run and every process of a distributed run see the same samples, and
    `Trainer`'s resume skips consumed batches without composing them (its sampler is sequential).

    Items are `PinTrainingSet`'s, without `vision_embeds`: the frozen vision encoder runs on every step.
    """

    CURRICULUM_OFFSET = 10**9  # the curriculum stream's scene indices start here
    MAX_DRAWS = 64  # scene indices tried per curriculum item for the requested object count

    def __init__(
        self,
        source,
        samples: int,
        allowed_categories: Iterable[str],
        curriculum_samples: int = 0,
        curriculum_num_objects: int = 3,
        seed: int = 0,
        referral_probability: float = 0.0,
    ):
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if not 0 <= curriculum_samples <= samples:
            raise ValueError(f"curriculum_samples must be in [0, {samples}], got {curriculum_samples}")
        if curriculum_num_objects < 1:
            raise ValueError(f"curriculum_num_objects must be >= 1, got {curriculum_num_objects}")
        if not 0.0 <= referral_probability <= 1.0:
            raise ValueError(f"referral_probability must be in [0, 1], got {referral_probability}")
        self.source, self.samples, self.allowed = source, samples, frozenset(allowed_categories)
        self.curriculum_samples, self.curriculum_num_objects = curriculum_samples, curriculum_num_objects
        self.seed, self.referral_probability = seed, referral_probability

    def __len__(self) -> int:
        return self.samples

    def _scene(self, k: int, curriculum: bool):
        if not curriculum:
            return self.source.scene(k)
        base = self.CURRICULUM_OFFSET + k * self.MAX_DRAWS
        for r in range(self.MAX_DRAWS):
            scene = self.source.scene(base + r)
            if len(scene.objects) == self.curriculum_num_objects:
                return scene
        raise ValueError(
            f"the scene source drew {self.MAX_DRAWS} scenes in a row without exactly {self.curriculum_num_objects} "
            "objects; lower curriculum_num_objects or raise the source's maximum object count"
        )

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < len(self):
            raise IndexError(k)
        k = int(k)
        curriculum = k < self.curriculum_samples
        image, objects = checked_scene(self._scene(k, curriculum), k, self.allowed)
        rng = np.random.default_rng(_seed_int("fresh", self.seed, k))
        j = int(rng.integers(len(objects)))  # one random pasted object per sample, as the reference
        name, box = objects[j]
        if not curriculum and self.referral_probability and rng.random() < self.referral_probability:
            name = referral_name(objects, j, rng) or name
        return {"image": image, "name": name, "box": box, "reconstruct_name": curriculum}


class EpochBlockSampler(Sampler[int]):
    """Shuffles `PinTrainingSet` indices within each pass, passes in order (keeps the curriculum first).

    Deterministic from `seed`, so every process of a distributed run and a resumed run see the same order.
    """

    def __init__(self, pool_size: int, epochs: int, seed: int = 0, shuffle: bool = True):
        self.pool_size, self.epochs, self.seed, self.shuffle = pool_size, epochs, seed, shuffle

    def __len__(self) -> int:
        return self.pool_size * self.epochs

    def __iter__(self):
        for epoch in range(self.epochs):
            order = np.arange(self.pool_size)
            if self.shuffle:
                order = np.random.default_rng(_seed_int("order", self.seed, epoch)).permutation(self.pool_size)
            yield from (epoch * self.pool_size + int(i) for i in order)


class PinCollator:
    """Batches `PinTrainingSet` items with the `PinProcessor`: right padding, labels on the target span only.

    Items of both curriculum phases may meet in one batch (at a pass boundary); they are encoded separately
    (the processor's `reconstruct_name` is per call) and right-padded to one length.

    Returns `input_ids`, `attention_mask`, `labels` `(B, L)` and `pixel_values` `(B, 3, S, S)` — or, when the
    items carry cached features, `vision_embeds` `(B, P, D)` instead of pixels.
    """

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items: list[dict]) -> dict:
        groups: dict[bool, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(bool(item["reconstruct_name"]), []).append(i)
        cached = "vision_embeds" in items[0]
        encoded = {}
        for flag, idx in groups.items():
            encoded[flag] = self.processor(
                images=[items[i]["image"] for i in idx],
                objects=[items[i]["name"] for i in idx],
                boxes=[items[i]["box"] for i in idx],
                reconstruct_name=flag,
                padding_side="right",
            )
        length = max(batch["input_ids"].shape[1] for batch in encoded.values())
        pad_id = self.processor.tokenizer.pad_token_id
        rows = {}
        for flag, idx in groups.items():
            batch = encoded[flag]
            extra = length - batch["input_ids"].shape[1]
            pad = lambda t, value: torch.nn.functional.pad(t, (0, extra), value=value)
            parts = (pad(batch["input_ids"], pad_id), pad(batch["attention_mask"], 0), pad(batch["labels"], -100))
            for row, i in enumerate(idx):
                rows[i] = (parts[0][row], parts[1][row], parts[2][row], batch["pixel_values"][row])
        order = range(len(items))
        out = {
            "input_ids": torch.stack([rows[i][0] for i in order]),
            "attention_mask": torch.stack([rows[i][1] for i in order]),
            "labels": torch.stack([rows[i][2] for i in order]),
        }
        if cached:
            out["vision_embeds"] = torch.stack([torch.as_tensor(item["vision_embeds"]) for item in items]).float()
        else:
            out["pixel_values"] = torch.stack([rows[i][3] for i in order])
        return out


@torch.no_grad()
def build_feature_cache(
    model,
    image_processor,
    images: np.ndarray,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The frozen vision encoder's outputs of every pool image, computed once (`model.encode_images`).

    Args:
        model: `PinForLocalization` or a cacheable `PeftBaseline` (anything with `encode_images`).
        images: `(N, S, S, 3)` uint8.
        dtype: storage dtype (float32 reproduces uncached training exactly; float16 halves the memory).

    Returns:
        `(N, P, D)` tensor on the CPU.
    """
    device = device or next(model.parameters()).device
    model_dtype = next(model.parameters()).dtype
    chunks = []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="caching vision-encoder outputs", leave=False)
    for start in starts:
        batch = list(images[start : start + batch_size])
        pixels = image_processor(batch, return_tensors="pt")["pixel_values"].to(device=device, dtype=model_dtype)
        chunks.append(model.encode_images(pixels).to("cpu", dtype))
    return torch.cat(chunks)


def scene_sources(pin_args, image_size: int, grid_size: int):
    """(train source, val source, held-out source, train categories, held-out categories)."""
    seed = pin_args.scene_seed
    kwargs = {"image_size": image_size, "grid_size": grid_size, "num_objects": (1, pin_args.max_objects)}
    if pin_args.objects_dir or pin_args.backgrounds_dir:
        for name in ("objects_dir", "backgrounds_dir"):
            value = getattr(pin_args, name)
            if not value or not Path(value).is_dir() and not Path(value).is_file():
                raise FileNotFoundError(
                    f"--{name} {value!r} does not exist (give both objects_dir and backgrounds_dir)"
                )
        objects = toyworld.FolderObjects(pin_args.objects_dir, seed=seed)
        held = list(pin_args.held_out_categories or [])
        unknown = sorted(set(held) - set(objects.categories))
        if unknown:
            raise ValueError(f"held_out_categories {unknown} are not categories of {pin_args.objects_dir}")
        train = [c for c in objects.categories if c not in held]
        split = toyworld.CategorySplit(train=train, held_out=held)
        kwargs.update(
            objects=objects, backgrounds=toyworld.FolderBackgrounds(pin_args.backgrounds_dir), category_split=split
        )
    else:
        split = toyworld.DEFAULT_SPLIT
    make = lambda s, which: toyworld.ToyWorld(s, split=which, **kwargs)
    # Distinct seeds: validation images are new images of the training categories.
    return make(seed, "train"), make(seed + 1, "train"), make(seed + 2, "held_out"), split.train, split.held_out
