"""The demo's processing function without a browser: toy scenes, Groma and PIN answers as `{phrase, box}` lists,
drawn boxes, local checkpoints by path, and the page object."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")

from groundvlm.recipes.systems.demo.drawing import draw_boxes  # noqa: E402
from groundvlm.recipes.systems.demo.grounding import TASKS, ground  # noqa: E402
from groundvlm.recipes.systems.demo.models import UNTRAINED_GROMA, UNTRAINED_PIN, load_groma, load_pin  # noqa: E402
from groundvlm.recipes.systems.demo.scenes import toy_scenes  # noqa: E402

LOCATE, GROUNDED, PIN = TASKS


@pytest.fixture(scope="module")
def systems():
    return {"groma": load_groma(), "pin": load_pin()}


@pytest.fixture(scope="module")
def scenes():
    return toy_scenes(2)


def test_toy_scenes_are_deterministic_and_named(scenes):
    again = toy_scenes(2)
    for a, b in zip(scenes, again):
        assert a.label == b.label and a.objects == b.objects
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert scenes[0].image.size == (224, 224)
    assert all(name in scenes[0].label for name, _ in scenes[0].objects)


def test_draw_boxes_outlines_on_an_upscaled_copy(scenes):
    image = scenes[0].image
    drawn = draw_boxes(image, [{"phrase": "thing", "box": [10, 20, 100, 120]}])
    assert drawn.size == (448, 448) and drawn is not image
    assert np.asarray(drawn)[120, 20].tolist() == [31, 119, 180]  # left edge x = 10 px (x2 = 20), first colour
    assert np.array_equal(np.asarray(image), np.asarray(toy_scenes(1)[0].image))  # the input is untouched


def test_pin_returns_one_box_for_the_object(systems, scenes):
    scene = scenes[0]
    name = scene.objects[0][0]
    result = ground(systems, scene.image, name, PIN)
    assert len(result.boxes) == 1
    entry = result.boxes[0]
    assert entry["phrase"] == name and isinstance(entry["parsed"], bool)
    x1, y1, x2, y2 = entry["box"]
    assert 0 <= x1 <= x2 <= 224 and 0 <= y1 <= y2 <= 224
    assert result.notes[0] == UNTRAINED_PIN  # the page says the default insert is untrained
    assert result.image.size == (448, 448)
    assert ground(systems, scene.image, name, PIN).boxes == result.boxes  # greedy: deterministic


def test_groma_locate_and_grounded_with_proposals(systems, scenes):
    image = np.asarray(scenes[1].image)  # the page may hand an array
    for task in (LOCATE, GROUNDED):
        result = ground(systems, image, "the red star" if task == LOCATE else "", task, proposals=3)
        proposals = [e for e in result.boxes if e["source"] == "proposal"]
        assert [e["phrase"] for e in proposals] == ["<r0>", "<r1>", "<r2>"]
        for entry in result.boxes:
            x1, y1, x2, y2 = entry["box"]
            assert 0 <= x1 <= x2 <= 224 and 0 <= y1 <= y2 <= 224
        assert result.notes[0] == UNTRAINED_GROMA
        assert isinstance(result.answer, str)


def test_missing_inputs_raise_value_error(systems, scenes):
    with pytest.raises(ValueError, match="pick a toy scene"):
        ground(systems, None, "red star", PIN)
    with pytest.raises(ValueError, match="object name"):
        ground(systems, scenes[0].image, "  ", PIN)
    with pytest.raises(ValueError, match="referring expression"):
        ground(systems, scenes[0].image, "", LOCATE)
    with pytest.raises(ValueError, match="task must be"):
        ground(systems, scenes[0].image, "x", "detect")


def test_local_checkpoints_load_by_path(systems, scenes, tmp_path):
    """`--groma PATH` / `--pin PATH`: a saved folder gives the same answers as the model it was saved from."""
    groma, pin = systems["groma"], systems["pin"]
    groma.model.save_pretrained(tmp_path / "groma")
    groma.processor.save_pretrained(tmp_path / "groma")
    pin.model.save_pretrained(tmp_path / "pin")
    pin.processor.save_pretrained(tmp_path / "pin")
    loaded = {"groma": load_groma(str(tmp_path / "groma")), "pin": load_pin(str(tmp_path / "pin"))}
    assert loaded["groma"].trained and str(tmp_path / "groma") in loaded["groma"].description
    image, name = scenes[0].image, scenes[0].objects[0][0]
    for task, text in ((LOCATE, name), (PIN, name)):
        want, got = ground(systems, image, text, task, proposals=2), ground(loaded, image, text, task, proposals=2)
        assert got.boxes == want.boxes and got.answer == want.answer
        assert not any("untrained" in note for note in got.notes)


def test_build_demo_makes_a_blocks_page(systems, scenes):
    import gradio as gr

    from groundvlm.recipes.systems.demo.app import build_demo

    assert isinstance(build_demo(systems, scenes), gr.Blocks)
