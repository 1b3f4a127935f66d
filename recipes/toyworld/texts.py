"""Text for every toy-world task, from a ``Scene`` (and a generator where wording varies).

* ``caption``: position-free captions naming every object ("a red star and a striped blue ring.") -- the
  caption-pretraining data of the caption VL-LLM, which must see objects without learning positions;
* ``located_caption``: the same with a coarse location word per object ("a red star at the top left and a
  striped blue ring in the middle."), as real web captions sometimes say where things are -- never coordinates;
* ``vqa``: (question, answer, kind) with kind colour / shape / count; answers are single words or digits;
* ``referring``: (expression, object index) incl. left/right/top/bottom/largest/smallest when unambiguous;
* ``region_caption``: "a striped blue ring" for one object (Groma's region captions);
* ``grounded_caption``: a caption with character spans of each object phrase and its boxes;
* ``detection``: COCO-style (category, bbox_xywh) annotations;
* ``pin_queries``: names and boxes of every object -- PIN's prompt/target *text* is built by
  ``PinProcessor`` (the PIN reference's grid codec), never here, so there is one place that formats it.

Texture words are used only where the texture is known and not plain; category names stay contiguous
("striped blue ring" contains "blue ring"), so a name-recall check can look for the category name.
"""

from __future__ import annotations

import numpy as np

from .objects import SHAPES
from .world import Scene, SceneObject

CAPTION_TEMPLATES: tuple[str, ...] = (
    "{objects}.",
    "a picture of {objects}.",
    "a photo of {objects}.",
    "an image of {objects}.",
    "this image shows {objects}.",
)

# Positional referring templates: (relation, templates with {noun}).
RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {noun} on the left", "the leftmost {noun}", "the left {noun}"),
    "right": ("the {noun} on the right", "the rightmost {noun}", "the right {noun}"),
    "top": ("the {noun} at the top", "the topmost {noun}", "the upper {noun}"),
    "bottom": ("the {noun} at the bottom", "the bottommost {noun}", "the lower {noun}"),
    "largest": ("the largest {noun}", "the biggest {noun}"),
    "smallest": ("the smallest {noun}", "the tiniest {noun}"),
}

# A relation is used only when it is unambiguous: the extreme object beats the runner-up by at least
# POSITION_MARGIN of the image side (centre distance) or AREA_MARGIN in area ratio.
POSITION_MARGIN = 0.1
AREA_MARGIN = 1.25


def article(name: str) -> str:
    """ "an" when ``name`` starts with a vowel letter, else "a" (the PIN reference's TextConstructor rule)."""
    if not name:
        raise ValueError("article() needs a non-empty name")
    return "an" if name[0].lower() in "aeiou" else "a"


def describe(obj: SceneObject) -> str:
    """The object's noun phrase without article: "striped blue ring", or the category name."""
    if obj.texture and obj.texture != "plain":
        return f"{obj.texture} {obj.name}"
    return obj.name


def region_caption(obj: SceneObject) -> str:
    """A region caption for one object: "a striped blue ring", "an orange star"."""
    phrase = describe(obj)
    return f"{article(phrase)} {phrase}"


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _caption_parts(scene: Scene, rng: np.random.Generator, templates) -> tuple[str, str, list[int]]:
    """(prefix, suffix, object order): the caption is prefix + joined phrases + suffix."""
    if not templates:
        raise ValueError("templates must contain at least one template with '{objects}'")
    template = templates[rng.integers(len(templates))]
    if template.count("{objects}") != 1:
        raise ValueError(f"caption template {template!r} must contain '{{objects}}' exactly once")
    prefix, suffix = template.split("{objects}")
    # Random order: the caption must not leak positions (e.g. through left-to-right order).
    order = [int(i) for i in rng.permutation(len(scene.objects))]
    return prefix, suffix, order


def caption(scene: Scene, rng: np.random.Generator, templates: tuple[str, ...] = CAPTION_TEMPLATES) -> str:
    """Position-free caption naming every object, e.g. "a photo of a red star and a striped blue ring."."""
    if not scene.objects:
        return "an empty background."
    prefix, suffix, order = _caption_parts(scene, rng, templates)
    return prefix + _join([region_caption(scene.objects[i]) for i in order]) + suffix


# Coarse location of an object's centre on a 3 x 3 split of the image: (row, column) -> phrase. Words a web caption
# would use ("a dog on the left"); no coordinates, so a model trained on them learns *where* only in words.
LOCATION_PHRASES: dict[tuple[int, int], str] = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "on the left",
    (1, 1): "in the middle",
    (1, 2): "on the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}


def location_phrase(obj: SceneObject, width: int, height: int) -> str:
    """Where the object's box centre lies on a 3 x 3 split of the image: "at the top left", "in the middle", ..."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    x1, y1, x2, y2 = obj.box
    column = min(2, max(0, int(3 * (x1 + x2) / 2 / width)))
    row = min(2, max(0, int(3 * (y1 + y2) / 2 / height)))
    return LOCATION_PHRASES[(row, column)]


def located_caption(scene: Scene, rng: np.random.Generator, templates: tuple[str, ...] = CAPTION_TEMPLATES) -> str:
    """Caption naming every object with its coarse location: "a photo of a red star at the top left and a striped
    blue ring in the middle." Objects in a random order, as in ``caption``."""
    if not scene.objects:
        return "an empty background."
    prefix, suffix, order = _caption_parts(scene, rng, templates)
    width, height = scene.size
    phrases = [f"{region_caption(scene.objects[i])} {location_phrase(scene.objects[i], width, height)}" for i in order]
    return prefix + _join(phrases) + suffix


def grounded_caption(
    scene: Scene, rng: np.random.Generator, templates: tuple[str, ...] = CAPTION_TEMPLATES
) -> tuple[str, list[tuple[int, int, list[tuple[int, int, int, int]]]]]:
    """Caption plus grounding: ``(text, [(start, end, [box, ...]), ...])``.

    ``text[start:end]`` is an object phrase ("a striped blue ring"); boxes are pixel (x1, y1, x2, y2).
    Phrases appear in a random order (positions are never implied by order).
    """
    if not scene.objects:
        return "an empty background.", []
    prefix, suffix, order = _caption_parts(scene, rng, templates)
    text, spans = prefix, []
    for n, i in enumerate(order):
        if n > 0:
            text += " and " if n == len(order) - 1 else ", "
        phrase = region_caption(scene.objects[i])
        spans.append((len(text), len(text) + len(phrase), [tuple(scene.objects[i].box)]))
        text += phrase
    return text + suffix, spans


def _plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "sh", "ch")) else noun + "s"


# The question kinds of `vqa` that name one object and ask another of its attributes (colour of the shape, shape of
# the colour): what binding an attribute to its object takes, as PIN's "the {name}" does for a position.
BINDING_KINDS = ("colour", "shape")


def vqa(
    scene: Scene, rng: np.random.Generator, all_shapes: tuple[str, ...] | None = None
) -> list[tuple[str, str, str]]:
    """Questions with answers: ``[(question, answer, kind)]``, kind in {"colour", "shape", "count"}.

    * count: "How many objects are there?" always; "How many stars are there?" for every shape present
      and one absent shape (answer "0"), drawn from ``all_shapes`` (default: the toy world's SHAPES);
    * colour: "What colour is the star?" for every shape that occurs exactly once;
    * shape: "What shape is the red object?" for every colour that occurs exactly once.
    Colour/shape questions need known attributes (procedural objects); folder pools get counts only.
    """
    if all_shapes is None:
        all_shapes = SHAPES
    objs = scene.objects
    out = [("How many objects are there?", str(len(objs)), "count")]
    shapes = [o.shape for o in objs if o.shape is not None]
    colours = [o.colour for o in objs if o.colour is not None]
    for shape in sorted(set(shapes)):
        if shapes.count(shape) == 1:
            colour = next(o.colour for o in objs if o.shape == shape)
            if colour is not None:
                out.append((f"What colour is the {shape}?", colour, "colour"))
    for colour in sorted(set(colours)):
        if colours.count(colour) == 1:
            shape = next(o.shape for o in objs if o.colour == colour)
            if shape is not None:
                out.append((f"What shape is the {colour} object?", shape, "shape"))
    if shapes:
        for shape in sorted(set(shapes)):
            out.append((f"How many {_plural(shape)} are there?", str(shapes.count(shape)), "count"))
        absent = [s for s in all_shapes if s not in shapes]
        if absent:
            shape = absent[rng.integers(len(absent))]
            out.append((f"How many {_plural(shape)} are there?", "0", "count"))
    return out


def _extreme(objs: list[SceneObject], members: list[int], relation: str, width: int, height: int) -> int | None:
    """Index of the unambiguous extreme member for ``relation``, or None."""
    if relation in ("left", "right"):
        keys = [objs[i].center[0] / width for i in members]
        margin, ratio = POSITION_MARGIN, False
    elif relation in ("top", "bottom"):
        keys = [objs[i].center[1] / height for i in members]
        margin, ratio = POSITION_MARGIN, False
    else:
        keys = [float(objs[i].area) for i in members]
        margin, ratio = AREA_MARGIN, True
    descending = relation in ("right", "bottom", "largest")
    order = sorted(range(len(members)), key=lambda j: keys[j], reverse=descending)
    best, runner = keys[order[0]], keys[order[1]]
    if ratio:
        clear = best >= runner * margin if descending else runner >= best * margin
    else:
        clear = abs(best - runner) >= margin
    return members[order[0]] if clear else None


def referring(scene: Scene, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Referring expressions ``[(expression, object index)]``, each naming exactly one object.

    Attribute expressions: "the red star" (unique name), "the star" (unique shape), "the red object"
    (unique colour). Positional ones, among all objects ("the object on the left", "the largest object")
    and among objects of one shape ("the star on the right"), only for groups of >= 2 and only when the
    extreme object is clear (see POSITION_MARGIN / AREA_MARGIN). Template wording is drawn from ``rng``.
    """
    objs = scene.objects
    width, height = scene.size
    out: list[tuple[str, int]] = []
    names = [o.name for o in objs]
    shapes = [o.shape for o in objs]
    colours = [o.colour for o in objs]
    for i, o in enumerate(objs):
        if names.count(o.name) == 1:
            out.append((f"the {o.name}", i))
        if o.shape is not None and shapes.count(o.shape) == 1 and o.shape != o.name:
            out.append((f"the {o.shape}", i))
        if o.colour is not None and colours.count(o.colour) == 1:
            out.append((f"the {o.colour} object", i))
    groups = [("object", list(range(len(objs))))]
    for shape in sorted({s for s in shapes if s is not None}):
        members = [i for i, s in enumerate(shapes) if s == shape]
        groups.append((shape, members))
    for noun, members in groups:
        if len(members) < 2:
            continue
        for relation, templates in RELATION_TEMPLATES.items():
            target = _extreme(objs, members, relation, width, height)
            if target is not None:
                template = templates[rng.integers(len(templates))]
                out.append((template.format(noun=noun), target))
    return out


def detection(scene: Scene) -> list[dict]:
    """COCO-style annotations ``[{"category": name, "bbox_xywh": [x, y, w, h]}]`` in pixels."""
    return [
        {"category": o.name, "bbox_xywh": [o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1]]}
        for o in scene.objects
    ]


def pin_queries(scene: Scene) -> list[dict]:
    """What PIN needs per object: ``{"name", "box" (pixel x1,y1,x2,y2), "grid_box" (inclusive cells)}``.

    The prompt "In the image is a(n) {name} located at" and the box text are formatted by PinProcessor.
    """
    return [{"name": o.name, "box": list(o.box), "grid_box": list(o.grid_box)} for o in scene.objects]
