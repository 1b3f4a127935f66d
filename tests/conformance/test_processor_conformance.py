"""PinProcessor, VPGTransProcessor and GromaProcessor against the conventions transformers' ProcessorMixin (and its
common processor tests) sets:

- kwargs routing: flat kwargs (`do_rescale=...`, `max_length=...`) reach the image processor / tokenizer, and so do
  structured ones (`images_kwargs`, `text_kwargs`, `common_kwargs`); the same kwarg given both ways is a ValueError;
- the tokenizer's and the image processor's init kwargs are defaults that call kwargs override;
- `model_input_names` is the tokenizer's input names then the image processor's, and a call returns exactly those;
- save_pretrained / from_pretrained keeps the processor's own arguments, the tokenizer's init kwargs and the defaults.

Two deliberate differences, checked here too: `padding_side` defaults to what the model needs (left for batched
generation; right for training targets) and only a call kwarg changes it, not a `padding_side` stored in the
tokenizer's config (LLaVA-style checkpoints store "right" from training); VPGTransProcessor's `max_length` counts the
text tokens after its `num_query_tokens` placeholders (the reference's `max_txt_len`). Runs on transformers 5.17
through 5.25."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, BlipImageProcessor

from groundvlm.processing import (
    GromaImageProcessor,
    GromaProcessor,
    PinProcessor,
    VPGTransProcessor,
    build_groma_prompt,
)
from tests._groma_tiny import groma_tokenizer
from tests._pin_tiny import make_tokenizer
from tests._vpgtrans_toys import opt_tokenizer


def _noise(size: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@dataclass
class Case:
    name: str
    make_tokenizer: Callable
    make_image_processor: Callable  # (**init kwargs) -> image processor
    build: Callable  # (image_processor, tokenizer) -> processor
    inputs: Callable  # (n) -> call inputs for a batch of n rows of different lengths
    training_inputs: Callable | None = None  # (n) -> inputs with targets, or None
    placeholders: int = 0  # ids in front of what the tokenizer's max_length counts


CASES = [
    Case(
        name="vpgtrans",
        make_tokenizer=opt_tokenizer,
        make_image_processor=lambda **kw: BlipImageProcessor(size={"height": 16, "width": 16}, **kw),
        build=lambda ip, tok: VPGTransProcessor(ip, tok, num_query_tokens=4),
        inputs=lambda n: {"images": [_noise(16, i) for i in range(n)], "text": ["a red star on the left", "a"][:n]},
        training_inputs=lambda n: {"images": [_noise(16, i) for i in range(n)], "text_target": ["a red star", "a"][:n]},
        placeholders=4,
    ),
    Case(
        name="groma",
        make_tokenizer=groma_tokenizer,
        make_image_processor=lambda **kw: GromaImageProcessor(size={"height": 112, "width": 112}, **kw),
        build=lambda ip, tok: GromaProcessor(ip, tok, num_image_tokens=16, num_proxy_tokens=100),
        inputs=lambda n: {
            "images": [_noise(40, i) for i in range(n)],
            "text": [build_groma_prompt("Describe the image briefly."), build_groma_prompt("What?")][:n],
        },
    ),
    Case(
        name="pin",
        make_tokenizer=lambda: make_tokenizer("opt"),
        make_image_processor=lambda **kw: BlipImageProcessor(size={"height": 224, "width": 224}, **kw),
        build=lambda ip, tok: PinProcessor(ip, tok, num_image_tokens=4),
        inputs=lambda n: {
            "images": [_noise(30, i) for i in range(n)],
            "objects": ["red star and blue ring", "cat"][:n],
        },
        training_inputs=lambda n: {
            "images": [_noise(30, i) for i in range(n)],
            "objects": ["red star and blue ring", "cat"][:n],
            "boxes": [[1, 2, 20, 25], [0, 0, 30, 30]][:n],
        },
    ),
]


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def case(request, tmp_path_factory):
    """The case, plus `tokenizer(**init_kwargs)`: its tokenizer reloaded from a saved folder with those init kwargs
    (as `from_pretrained(path, max_length=...)` records them)."""
    c = request.param
    folder = tmp_path_factory.mktemp(f"tokenizer_{c.name}")
    c.make_tokenizer().save_pretrained(folder)
    c.tokenizer = lambda **kw: AutoTokenizer.from_pretrained(folder, **kw)
    c.processor = lambda tokenizer=None, image_processor=None: c.build(
        image_processor or c.make_image_processor(), tokenizer or c.tokenizer()
    )
    return c


def _text_length(case, out) -> int:
    return out["input_ids"].shape[-1] - case.placeholders


def _left_padded(out) -> bool:
    """Whether the shorter of two rows is padded on the left (its mask ends with a real token)."""
    mask = out["attention_mask"]
    shorter = int(mask.sum(-1).argmin())
    assert not bool(mask[shorter].all()), "the two rows must differ in length"
    return bool(mask[shorter, -1])


def _long_enough(case, processor) -> int:
    """A max_length a few tokens beyond the batch's natural text length."""
    return _text_length(case, processor(**case.inputs(2))) + 5


def test_model_input_names_are_the_tokenizers_then_the_image_processors(case):
    processor = case.processor()
    expected = list(dict.fromkeys(processor.tokenizer.model_input_names + processor.image_processor.model_input_names))
    assert processor.model_input_names == expected
    assert set(processor(**case.inputs(2)).keys()) == set(expected)


def test_flat_kwargs_reach_the_image_processor_and_the_tokenizer(case):
    processor = case.processor()
    assert processor(**case.inputs(1))["pixel_values"][0].mean() > 0  # so a negative mean below means -1 was applied
    length = _long_enough(case, processor)
    out = processor(**case.inputs(2), do_rescale=True, rescale_factor=-1.0, padding="max_length", max_length=length)
    assert out["pixel_values"][0].mean() <= 0
    assert _text_length(case, out) == length
    batched = processor(**case.inputs(2), padding="longest", max_length=length + 10)
    assert _text_length(case, batched) < length


def test_structured_kwargs_reach_the_image_processor_and_the_tokenizer(case):
    processor = case.processor()
    length = _long_enough(case, processor)
    out = processor(
        **case.inputs(2),
        images_kwargs={"do_rescale": True, "rescale_factor": -1.0},
        text_kwargs={"padding": "max_length", "max_length": length},
        common_kwargs={"return_tensors": "pt"},
    )
    assert isinstance(out["input_ids"], torch.Tensor) and out["pixel_values"][0].mean() <= 0
    assert _text_length(case, out) == length
    as_lists = processor(**case.inputs(2), common_kwargs={"return_tensors": None})
    assert isinstance(as_lists["input_ids"], list)


def test_a_kwarg_given_twice_raises(case):
    processor = case.processor()
    with pytest.raises(ValueError, match="passed two times"):
        processor(**case.inputs(1), images_kwargs={"do_rescale": True, "rescale_factor": -1.0}, do_rescale=True)


def test_component_init_kwargs_are_defaults_that_call_kwargs_override(case):
    natural = _long_enough(case, case.processor())
    processor = case.processor(tokenizer=case.tokenizer(max_length=natural + 3, padding="max_length"))
    assert _text_length(case, processor(**case.inputs(2))) == natural + 3
    assert _text_length(case, processor(**case.inputs(2), max_length=natural + 1)) == natural + 1
    negative = case.processor(image_processor=case.make_image_processor(do_rescale=True, rescale_factor=-1.0))
    assert negative(**case.inputs(1))["pixel_values"][0].mean() <= 0
    assert negative(**case.inputs(1), rescale_factor=1 / 255)["pixel_values"][0].mean() > 0


def test_padding_side_defaults(case):
    processor = case.processor()
    assert _left_padded(processor(**case.inputs(2)))  # batched generation
    if case.training_inputs is not None:
        assert not _left_padded(processor(**case.training_inputs(2)))
    assert not _left_padded(processor(**case.inputs(2), padding_side="right"))
    assert not _left_padded(processor(**case.inputs(2), text_kwargs={"padding_side": "right"}))
    # A tokenizer whose config stores "right" (saved after training) leaves the generation default alone.
    stored_right = case.processor(tokenizer=case.tokenizer(padding_side="right"))
    assert stored_right.tokenizer.init_kwargs["padding_side"] == "right"
    assert _left_padded(stored_right(**case.inputs(2)))


def test_save_load_round_trip_keeps_init_kwargs_and_defaults(case, tmp_path):
    natural = _long_enough(case, case.processor())
    processor = case.processor(tokenizer=case.tokenizer(max_length=natural + 3, padding="max_length"))
    expected = processor(**case.inputs(2))
    processor.save_pretrained(tmp_path)
    loaded = type(processor).from_pretrained(tmp_path)
    without_auto_map = lambda d: {k: v for k, v in d.items() if k != "auto_map"}
    assert without_auto_map(loaded.to_dict()) == without_auto_map(processor.to_dict())
    assert {k: loaded.tokenizer.init_kwargs.get(k) for k in ("max_length", "padding")} == {
        "max_length": natural + 3,
        "padding": "max_length",
    }
    out = loaded(**case.inputs(2))
    assert out.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], rtol=0, atol=0, msg=key)
