"""The toy LM pretraining corpus: the text a toy OPT/LLaMA/T5 has "read" before any VLM is built.

Real LLMs arrive knowing English, numbers and answer formats; PIN relies on the frozen LM already being
able to write "[x1,y1,x2,y2]" after "located at", and VPGTrans's VQA evaluation on "Question: {q}
Answer:" (OPT/LLaMA) and "Question: {q} Short answer:" (Flan-T5; the VPGTrans reference's VQA prompts). So the corpus mixes, per
toy scene of every category (base models see all categories):

- position-free captions, region captions, grounded captions and referring expressions (toyworld.texts);
- VQA in both prompt formats with the scene's true answers;
- PIN-style box sentences ("In the image is a red star located at [14,28,70,112]") with the scene's true
  grid box and, as often, a uniformly random grid box, so the LM's box prior is broad;
- counting sentences, and number lists (grid ticks, counting sequences) for number fluency.

`lookup_pairs` adds what that corpus never asks and a pretrained LLM brings: in-context lookups, as (prompt, answer)
pairs -- a colour/shape question about the caption in front ("a photo of a red star and a blue moon. Question: What
colour is the star? Answer:" -> " red") and PIN's question about a list of objects with their boxes ("a red star
[14,28,70,112] a blue moon [0,7,35,56]. In the image is a blue moon located at" -> " [0,7,35,56]").

Boxes use PIN's grid encoding (the reference's grid codec): grid cells (inclusive) [gx1,gy1,gx2,gy2] are written as
"[{c*gx1},{c*gy1},{c*(gx2+1)},{c*(gy2+1)}]" with c the cell size in pixels and no spaces.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from groundvlm.processing.pin_grid_codec import PinGridCodec
from groundvlm.processing.processing_pin import pin_prompt

from . import texts
from .compose import GRID_SIZE
from .world import IMAGE_SIZE, ToyWorld

VQA_FORMATS = ("Question: {q} Answer: {a}", "Question: {q} Short answer: {a}")


def box_codec(image_size: int = IMAGE_SIZE, grid_size: int = GRID_SIZE) -> PinGridCodec:
    """PIN's box codec on the toy world's geometry (default: 112 px, 16 x 16 cells of 7 px; ticks 0, 7, ..., 112)."""
    return PinGridCodec(grid_size=grid_size, image_size=image_size)


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def random_grid_box(rng: np.random.Generator, grid_size: int) -> tuple[int, int, int, int]:
    """A uniformly random non-empty inclusive grid box."""
    x1, x2 = sorted(rng.integers(0, grid_size, size=2))
    y1, y2 = sorted(rng.integers(0, grid_size, size=2))
    return int(x1), int(y1), int(x2), int(y2)


def pin_sentence(name: str, box: str) -> str:
    """PIN's training target without the image/end tokens: "In the image is a {name} located at {box}"."""
    return pin_prompt(name) + " " + box


def scene_texts(scene, rng: np.random.Generator, image_size: int = IMAGE_SIZE, grid_size: int = GRID_SIZE) -> list[str]:
    """The corpus texts drawn from one scene (see the module docstring)."""

    codec = box_codec(image_size, grid_size)

    def box(cells) -> str:
        return codec.encode_cells(cells)

    out = [texts.caption(scene, rng), texts.grounded_caption(scene, rng)[0]]
    for q, a, _kind in texts.vqa(scene, rng):
        out.append(VQA_FORMATS[int(rng.integers(len(VQA_FORMATS)))].format(q=q, a=a))
    for expr, idx in texts.referring(scene, rng):
        out.append(f"{expr} is located at {box(scene.objects[idx].grid_box)}")
    for obj in scene.objects:
        out.append(texts.region_caption(obj))
        out.append(pin_sentence(obj.name, box(obj.grid_box)))
        out.append(pin_sentence(obj.name, box(random_grid_box(rng, grid_size))))
    n = len(scene.objects)
    noun = "object" if n == 1 else "objects"
    out.append(
        f"There {'is' if n == 1 else 'are'} {_NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else n} {noun} in the image."
    )
    return out


def number_texts(rng: np.random.Generator, image_size: int = IMAGE_SIZE, grid_size: int = GRID_SIZE) -> list[str]:
    """Number fluency: a run of grid ticks, a counting sequence and a list of random ticks."""
    ticks = box_codec(image_size, grid_size).ticks
    start = int(rng.integers(0, grid_size))
    stop = int(rng.integers(start + 1, grid_size + 1))
    run = ", ".join(ticks[start : stop + 1])
    first = int(rng.integers(0, 20))
    count = " ".join(str(i) for i in range(first, first + int(rng.integers(3, 10))))
    # No brackets: "[..]" is kept for valid boxes, so the LM's box prior stays clean.
    picks = " ".join(ticks[int(i)] for i in rng.integers(0, grid_size + 1, size=int(rng.integers(2, 6))))
    return [run, count, picks]


def lm_corpus(n_scenes: int, seed: int = 0, image_size: int = IMAGE_SIZE, grid_size: int = GRID_SIZE) -> list[str]:
    """The LM pretraining texts of `n_scenes` toy scenes of every category (deterministic from `seed`).

    Each scene's texts draw from the world's own text generator for that scene (`ToyWorld.text_rng`).
    """
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    if image_size % grid_size:
        raise ValueError(f"image_size={image_size} must be a multiple of grid_size={grid_size}")
    world = ToyWorld(seed=seed, image_size=image_size, grid_size=grid_size, split="all")
    corpus: list[str] = []
    for i in tqdm(range(n_scenes), desc="corpus", unit="scene"):
        rng = world.text_rng(i)
        corpus.extend(scene_texts(world.scene(i), rng, image_size, grid_size))
        corpus.extend(number_texts(rng, image_size, grid_size))
    return corpus


def lookup_pairs(
    n_scenes: int,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    grid_size: int = GRID_SIZE,
    max_listed: int | None = None,
) -> list[tuple[str, str]]:
    """In-context lookups of `n_scenes` toy scenes of two or more objects (every category), as (prompt, answer):

    - every colour/shape question of the scene (``texts.vqa``'s binding kinds) asked after the scene's caption, in
      the decoder-only VQA format of the corpus;
    - PIN's prompt for each object whose name is unique in the scene, after the scene's objects listed with their
      true grid boxes in a random order; the answer is the asked object's box. With `max_listed`, the list is
      padded with distractors -- categories absent from the scene, each with a uniformly random grid box -- to a
      uniformly drawn length between the scene's object count and `max_listed`; only the scene's objects are
      asked. Listing only the scene's 1-3 objects leaves a shortcut: copying any listed box gets the first
      number right about half the time; more listed boxes make picking the named one pay.

    Trained with the loss on the answer only, they teach retrieval from the context (the answer is in the prompt,
    never in a prior). Deterministic from `seed`; its own generator per scene, so `lm_corpus` is unchanged."""
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    codec = box_codec(image_size, grid_size)
    world = ToyWorld(seed=seed, image_size=image_size, grid_size=grid_size, split="all")
    if max_listed is not None and not 2 <= max_listed <= len(world.categories):
        raise ValueError(
            f"max_listed must lie in [2, {len(world.categories)}] (the world's categories), got {max_listed}"
        )
    question_format = VQA_FORMATS[0].removesuffix(" {a}")
    pairs: list[tuple[str, str]] = []
    for i in range(n_scenes):
        scene = world.scene(i)
        if len(scene.objects) < 2:
            continue
        rng = np.random.default_rng((seed, i, 1))
        caption = texts.caption(scene, rng)
        for question, answer, kind in texts.vqa(scene, rng):
            if kind in texts.BINDING_KINDS:
                pairs.append((f"{caption} {question_format.format(q=question)}", f" {answer}"))
        names = [o.name for o in scene.objects]
        boxes = [codec.encode_cells(o.grid_box) for o in scene.objects]
        listed_names, listed_boxes = list(names), list(boxes)
        if max_listed is not None and max_listed > len(names):
            extra = int(rng.integers(0, max_listed - len(names) + 1))
            absent = [c for c in world.categories if c not in names]
            for k in rng.choice(len(absent), size=min(extra, len(absent)), replace=False):
                listed_names.append(absent[int(k)])
                listed_boxes.append(codec.encode_cells(random_grid_box(rng, grid_size)))
        order = rng.permutation(len(listed_names))
        context = " ".join(f"{texts.article(listed_names[k])} {listed_names[k]} {listed_boxes[k]}" for k in order)
        for name, box in zip(names, boxes):
            if names.count(name) == 1:
                pairs.append((f"{context}. {pin_prompt(name)}", f" {box}"))
    return pairs
