"""Task texts on hand-built scenes, with expected answers stated independently."""

import re

import numpy as np
import pytest
from PIL import Image

from groundvlm.recipes.toyworld import (
    Scene,
    SceneObject,
    ToyWorld,
    article,
    caption,
    detection,
    grounded_caption,
    located_caption,
    location_phrase,
    pin_queries,
    referring,
    region_caption,
    vqa,
)

POSITION_WORDS = re.compile(r"\b(left|right|top|bottom|above|below|upper|lower|middle|center|centre)\b")


def _obj(colour, shape, box, texture="plain"):
    # grid boxes on a 112-px, 16-cell image (7 px per cell)
    grid = (box[0] // 7, box[1] // 7, box[2] // 7 - 1, box[3] // 7 - 1)
    return SceneObject(f"{colour} {shape}", colour, shape, texture, box, grid)


def _scene(*objects):
    return Scene(index=0, image=Image.new("RGB", (112, 112)), objects=list(objects))


# two stars (left small, right big) and a striped orange ring at the bottom middle
STARS = _scene(
    _obj("red", "star", (0, 0, 28, 28)),
    _obj("blue", "star", (63, 7, 112, 56)),
    _obj("orange", "ring", (35, 70, 77, 112), texture="striped"),
)


def test_article_follows_the_vowel_rule():
    assert article("orange star") == "an"
    assert article("red star") == "a"
    assert article("umbrella") == "an"
    assert article("Elephant") == "an"
    assert article("yellow moon") == "a"
    with pytest.raises(ValueError):
        article("")


def test_region_caption():
    assert region_caption(STARS.objects[0]) == "a red star"
    assert region_caption(STARS.objects[2]) == "a striped orange ring"
    assert region_caption(_obj("orange", "star", (0, 0, 7, 7))) == "an orange star"


def test_caption_names_every_object_and_never_positions():
    rng = np.random.default_rng(0)
    first_phrases = set()
    for _ in range(40):
        text = caption(STARS, rng)
        for phrase in ("a red star", "a blue star", "a striped orange ring"):
            assert phrase in text
        assert not POSITION_WORDS.search(text)
        assert text.endswith(".")
        first_phrases.add(min(("red star", "blue star", "orange ring"), key=lambda p: text.index(p)))
    # The object order is random, so it cannot leak left-to-right order.
    assert len(first_phrases) == 3
    assert caption(_scene(), rng) == "an empty background."


def test_caption_joins_with_commas_and_and():
    text = caption(STARS, np.random.default_rng(0), templates=("{objects}.",))
    assert re.fullmatch(r"a [a-z ]+, a [a-z ]+ and a [a-z ]+\.", text)
    two = _scene(STARS.objects[0], STARS.objects[1])
    assert caption(two, np.random.default_rng(0), templates=("{objects}.",)) in (
        "a red star and a blue star.",
        "a blue star and a red star.",
    )


def test_location_phrase_splits_the_image_in_thirds():
    # centres (14, 14), (87.5, 31.5), (56, 91): top left, top right, bottom (middle column)
    assert [location_phrase(o, 112, 112) for o in STARS.objects] == [
        "at the top left",
        "at the top right",
        "at the bottom",
    ]
    assert location_phrase(_obj("red", "star", (35, 35, 77, 77)), 112, 112) == "in the middle"
    assert location_phrase(_obj("red", "star", (0, 42, 28, 70)), 112, 112) == "on the left"
    assert location_phrase(_obj("red", "star", (84, 42, 112, 70)), 112, 112) == "on the right"
    with pytest.raises(ValueError, match="image size"):
        location_phrase(STARS.objects[0], 0, 112)


def test_located_caption_says_where_each_object_is_in_words():
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(30):
        text = located_caption(STARS, rng, templates=("{objects}.",))
        for phrase in (
            "a red star at the top left",
            "a blue star at the top right",
            "a striped orange ring at the bottom",
        ):
            assert phrase in text
        assert not re.search(r"\d", text)  # words only, never coordinates
        orders.add(text.index("red star") < text.index("blue star"))
    assert orders == {True, False}  # random object order, as in caption()
    assert located_caption(_scene(), rng) == "an empty background."


def test_grounded_caption_spans_point_at_the_phrases():
    text, spans = grounded_caption(STARS, np.random.default_rng(1))
    assert len(spans) == 3
    found = {text[s:e]: boxes for s, e, boxes in spans}
    assert found == {
        "a red star": [(0, 0, 28, 28)],
        "a blue star": [(63, 7, 112, 56)],
        "a striped orange ring": [(35, 70, 77, 112)],
    }


def test_vqa_answers():
    qa = vqa(STARS, np.random.default_rng(0))
    by_question = {q: (a, k) for q, a, k in qa}
    assert by_question["How many objects are there?"] == ("3", "count")
    assert by_question["How many stars are there?"] == ("2", "count")
    assert by_question["How many rings are there?"] == ("1", "count")
    assert by_question["What colour is the ring?"] == ("orange", "colour")
    assert by_question["What shape is the red object?"] == ("star", "shape")
    assert by_question["What shape is the orange object?"] == ("ring", "shape")
    # Two stars: "what colour is the star" is ambiguous and must not be asked.
    assert "What colour is the star?" not in by_question
    absent = [q for q, a, k in qa if a == "0"]
    assert len(absent) == 1 and "star" not in absent[0] and "ring" not in absent[0]
    assert {k for _, _, k in qa} == {"count", "colour", "shape"}
    # Absent-shape questions only use the shapes they are given.
    qa = vqa(STARS, np.random.default_rng(0), all_shapes=("star", "ring", "cross"))
    assert ("How many crosses are there?", "0", "count") in qa


def test_referring_expressions_resolve_to_the_right_object():
    refs = referring(STARS, np.random.default_rng(0))
    as_dict = {}
    for expression, index in refs:
        assert as_dict.setdefault(expression, index) == index  # no expression names two objects
    assert as_dict["the red star"] == 0
    assert as_dict["the orange ring"] == 2
    assert as_dict["the ring"] == 2
    assert "the star" not in as_dict  # two stars
    # Among the stars (red: centre (14, 14), 28x28; blue: centre (87.5, 31.5), 49x49) every relation is
    # clear: left/top/smallest -> red (0), right/bottom/largest -> blue (1).
    expected = {
        "left": 0,
        "top": 0,
        "upper": 0,
        "smallest": 0,
        "tiniest": 0,
        "right": 1,
        "bottom": 1,
        "lower": 1,
        "largest": 1,
        "biggest": 1,
    }
    star_relations = [(e, i) for e, i in refs if "star" in e and e not in ("the red star", "the blue star")]
    assert len(star_relations) == 6
    for expression, index in star_relations:
        (word,) = [w for w in expected if w in expression]
        assert index == expected[word], expression
    # Among all objects the ring is the clear bottom one (centre y 91 vs 35 and 14).
    bottom = [i for e, i in refs if "object" in e and ("bottom" in e or "lower" in e)]
    assert bottom == [2]


def test_referring_skips_ambiguous_relations():
    # Two circles side by side at the same height and size: left/right are clear, top/bottom and
    # largest/smallest are not.
    scene = _scene(_obj("red", "circle", (0, 35, 28, 63)), _obj("blue", "circle", (70, 35, 98, 63)))
    refs = referring(scene, np.random.default_rng(0))
    words = " ".join(e for e, _ in refs)
    assert not re.search(r"\b(top|topmost|upper|bottom|bottommost|lower|largest|biggest|smallest|tiniest)\b", words)
    assert any(("left" in e) and i == 0 for e, i in refs)
    assert any(("right" in e) and i == 1 for e, i in refs)


def test_detection_and_pin_queries():
    anns = detection(STARS)
    assert anns[1] == {"category": "blue star", "bbox_xywh": [63, 7, 49, 49]}
    queries = pin_queries(STARS)
    assert queries[2] == {"name": "orange ring", "box": [35, 70, 77, 112], "grid_box": [5, 10, 10, 15]}


def test_texts_on_world_scenes_are_deterministic():
    world = ToyWorld(seed=0)
    for i in range(5):
        scene = world.scene(i)
        assert caption(scene, world.text_rng(i)) == caption(world.scene(i), world.text_rng(i))
        for expression, index in referring(scene, world.text_rng(i)):
            assert 0 <= index < len(scene.objects) and expression.startswith("the ")
