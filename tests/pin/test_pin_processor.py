"""PinProcessor and the grid codec: reference text format, targets/labels, parsing, pixel boxes, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Blip2Processor

from groundvlm.processing import PinGridCodec, PinProcessor
from tests._pin_tiny import blip_image_processor, llava_processor, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer("opt")


@pytest.fixture(scope="module")
def processor(tokenizer):
    base = Blip2Processor(image_processor=blip_image_processor(), tokenizer=tokenizer, num_query_tokens=4)
    return PinProcessor.from_base_processor(base)


def test_tick_labels_follow_the_reference_format():
    assert PinGridCodec(16, 224).ticks == [str(14 * i) for i in range(17)]
    assert PinGridCodec(16, 112).ticks == [str(7 * i) for i in range(17)]
    # Whole -> int, exact one decimal -> 1 decimal, else 2 decimals (normalised-range ablation, 28 px grid).
    assert PinGridCodec(16, 224, range_max_value=1).ticks[:5] == ["0", "0.06", "0.12", "0.19", "0.25"]
    assert PinGridCodec(16, 224, range_max_value=1).ticks[8] == "0.5"
    assert PinGridCodec(16, 28).ticks[:4] == ["0", "1.75", "3.5", "5.25"]


@pytest.mark.parametrize("size, cell", [(224, 14), (112, 7)])
def test_encode_decode_round_trip(size, cell):
    codec = PinGridCodec(16, size)
    assert codec.encode_cells([2, 3, 9, 14]) == f"[{2 * cell},{3 * cell},{10 * cell},{15 * cell}]"
    for cells in ([0, 0, 0, 0], [0, 0, 15, 15], [2, 3, 9, 14], [15, 7, 15, 8]):
        box = [cells[0] * cell, cells[1] * cell, (cells[2] + 1) * cell, (cells[3] + 1) * cell]
        assert codec.box_to_cells(box) == cells
        decoded, parsed, reason = codec.decode(" " + codec.encode(box))
        assert (decoded, parsed, reason) == ([float(v) for v in box], True, "")
    # A box that is not grid-aligned is widened to the cells it touches.
    assert codec.box_to_cells([cell + 1, 0.5, 3 * cell - 1, size]) == [1, 0, 2, 15]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("In the image is a cat located at", "no ' [x1,y1,x2,y2]' box"),
        ("located at[28,42,140,210]", "no ' [x1,y1,x2,y2]' box"),  # the reference needs the space before '['
        ("located at [28,42,141,210]", "x2='141' is not a tick label"),
        ("located at [28, 42,140,210]", "y1=' 42' is not a tick label"),
        ("located at [224,42,140,210]", "x1='224' is not a tick label"),  # x1 must be one of the first 16 ticks
        ("located at [140,42,28,210]", "degenerate box"),
        ("located at [28,42,28,210]", "degenerate box"),
    ],
)
def test_unparseable_text_gives_fallback_box_and_flag(processor, text, reason):
    (result,) = processor.post_process_localization([text], target_sizes=[(224, 224)], labels=["cat"])
    assert result["parsed"] is False and reason in result["reason"]
    assert torch.equal(result["boxes"], torch.tensor([[0.0, 0.0, 14.0, 14.0]]))  # cell [0,0,0,0]
    assert result["labels"] == ["cat"] and result["text"] == text


def test_boxes_are_scaled_to_the_original_image(processor, tokenizer):
    texts = ["In the image is a cat located at [28,42,140,210]</s>", "In the image is an owl located at [0,0,224,112]"]
    results = processor.post_process_localization(texts, target_sizes=[(448, 224), (100, 300)])
    # x scales by w/224, y by h/224.
    assert torch.equal(results[0]["boxes"], torch.tensor([[28.0, 84.0, 140.0, 420.0]]))
    assert torch.allclose(results[1]["boxes"], torch.tensor([[0.0, 0.0, 300.0, 50.0]]))
    assert [r["labels"] for r in results] == [["cat"], ["owl"]]  # read back from the prompt
    assert all(r["parsed"] for r in results)
    # Token ids (with the image placeholders, skipped as special tokens) give the same result.
    ids = processor(images=[Image.new("RGB", (224, 448))], objects=["cat"])["input_ids"]
    box_ids = tokenizer(" [28,42,140,210]", add_special_tokens=False, return_tensors="pt")["input_ids"]
    (from_ids,) = processor.post_process_localization(torch.cat([ids, box_ids], 1), target_sizes=[(448, 224)])
    assert torch.equal(from_ids["boxes"], results[0]["boxes"]) and from_ids["labels"] == ["cat"]


def test_prompt_article_and_inputs_layout(processor, tokenizer):
    assert processor.build_prompt("cat") == "In the image is a cat located at"
    assert processor.build_prompt("apple") == "In the image is an apple located at"
    assert processor.build_prompt("Owl") == "In the image is an Owl located at"
    assert processor.build_prompt("unicorn") == "In the image is an unicorn located at"  # vowel letter, as reference
    out = processor(images=[Image.new("RGB", (50, 40)), Image.new("RGB", (30, 30))], objects=["cat", "apple"])
    assert out["pixel_values"].shape == (2, 3, 224, 224)
    image_id, pad_id = tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id
    cat = tokenizer("In the image is a cat located at")["input_ids"]
    apple = tokenizer("In the image is an apple located at")["input_ids"]
    longest = max(len(cat), len(apple))
    # BLIP-2 layout: 4 placeholders, then the (left-padded) text with its BOS, as Blip2Processor.
    assert out["input_ids"][0].tolist() == [image_id] * 4 + [pad_id] * (longest - len(cat)) + cat
    assert out["input_ids"][1].tolist() == [image_id] * 4 + [pad_id] * (longest - len(apple)) + apple
    assert out["attention_mask"][0].tolist() == [1] * 4 + [0] * (longest - len(cat)) + [1] * len(cat)


def test_training_targets_and_labels(processor, tokenizer):
    image = Image.new("RGB", (448, 224))
    out = processor(images=[image], objects=["cat"], boxes=[[56, 28, 280, 112]])
    text = "In the image is a cat located at [28,28,140,112]</s>"  # x/2, y/1 onto the 224 grid
    ids = tokenizer(text)["input_ids"]
    n_prefix = len(tokenizer("In the image is a cat located at")["input_ids"])
    assert out["input_ids"][0].tolist() == [tokenizer.convert_tokens_to_ids("<image>")] * 4 + ids
    assert out["labels"][0].tolist() == [-100] * (4 + n_prefix) + ids[n_prefix:]
    supervised = [t for t in out["labels"][0].tolist() if t != -100]
    assert tokenizer.decode(supervised) == " [28,28,140,112]</s>"

    rec = processor(images=[image], objects=["owl"], boxes=[[0, 0, 448, 224]], reconstruct_name=True)
    supervised = [t for t in rec["labels"][0].tolist() if t != -100]
    assert tokenizer.decode(supervised) == " owl located at [0,0,224,224] </s>"  # note the reference's space
    assert processor.build_target("owl", "[0,0,224,224]", reconstruct_name=True) == (
        "In the image is an owl located at [0,0,224,224] </s>",
        "In the image is an",
    )

    batch = processor(images=[image, image], objects=["cat", "elephant"], boxes=[[0, 0, 56, 56], [0, 0, 448, 224]])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert batch["labels"][0, -1].item() == -100 and batch["attention_mask"][0, -1].item() == 0  # right padding


def test_llava_layout_and_squash(tokenizer):
    llama_tok = make_tokenizer("llama")
    processor = PinProcessor.from_base_processor(llava_processor(llama_tok))
    assert processor.num_image_tokens == 16 and processor.text_prefix == "<image>"
    assert processor.image_processor.size["height"] == 224 and not processor.image_processor.do_center_crop
    out = processor(images=[Image.new("RGB", (400, 100))], objects=["cat"])
    image_id = llama_tok.convert_tokens_to_ids("<image>")
    expected = llama_tok("<image>" * 16 + "In the image is a cat located at")["input_ids"]
    assert out["input_ids"][0].tolist() == expected and expected[0] == llama_tok.bos_token_id
    assert (out["input_ids"] == image_id).sum().item() == 16
    assert out["pixel_values"].shape == (1, 3, 224, 224)


def test_bad_inputs_raise_clear_errors(processor, tokenizer):
    rgb = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="mode 'L'"):
        processor(images=[Image.new("L", (32, 32))], objects=["cat"])
    with pytest.raises(ValueError, match="mode 'RGBA'"):
        processor(images=[Image.new("RGBA", (32, 32))], objects=["cat"])
    with pytest.raises(ValueError, match="RGB images"):
        processor(images=[np.zeros((32, 32), dtype=np.uint8)], objects=["cat"])
    for name in ("", "   ", None):
        with pytest.raises(ValueError, match="non-empty"):
            processor(images=[rgb], objects=[name])
    with pytest.raises(ValueError, match="2 images but 1 object"):
        processor(images=[rgb, rgb], objects=["cat"])
    with pytest.raises(ValueError, match="box 0"):
        processor(images=[rgb], objects=["cat"], boxes=[[10, 10, 5, 20]])
    with pytest.raises(ValueError, match="box 0"):
        processor(images=[rgb], objects=["cat"], boxes=[[0, 0, 64, 20]])  # outside the 32 px image
    with pytest.raises(ValueError, match="2 target_sizes for 1 generated"):
        processor.post_process_localization(["x"], target_sizes=[(1, 1), (2, 2)])
    with pytest.raises(ValueError, match=r"positive \(height, width\)"):
        processor.post_process_localization(["x"], target_sizes=[(0, 10)])
    with pytest.raises(ValueError, match="squash"):
        PinProcessor(image_processor=blip_image_processor(112), tokenizer=tokenizer, image_size=224)
    with pytest.raises(ValueError, match="no '<img>' token"):
        PinProcessor(image_processor=blip_image_processor(), tokenizer=tokenizer, image_token="<img>")


def test_112_pixel_world(tokenizer):
    processor = PinProcessor(
        image_processor=blip_image_processor(112), tokenizer=tokenizer, num_image_tokens=4, image_size=112
    )
    out = processor(images=[Image.new("RGB", (112, 112))], objects=["cat"], boxes=[[7, 14, 63, 112]])
    supervised = [t for t in out["labels"][0].tolist() if t != -100]
    assert tokenizer.decode(supervised) == " [7,14,63,112]</s>"
    (result,) = processor.post_process_localization([" [7,14,63,112]"], target_sizes=[(224, 224)])
    assert torch.equal(result["boxes"], torch.tensor([[14.0, 28.0, 126.0, 224.0]]))


def test_processor_and_model_config_must_share_one_grid(processor, tmp_path):
    """A PinProcessor loaded beside a PIN's config.json checks that both use one box grid; a mismatch names both."""
    from groundvlm.modeling import PinConfig

    processor.check_model_config(PinConfig(grid_size=16, image_size=processor.image_size))
    with pytest.raises(ValueError, match=r"PinProcessor has grid_size=16 but the model's PinConfig has grid_size=8"):
        processor.check_model_config(PinConfig(grid_size=8, image_size=processor.image_size))

    processor.save_pretrained(tmp_path)
    PinConfig(grid_size=16, image_size=processor.image_size).save_pretrained(tmp_path)
    assert PinProcessor.from_pretrained(tmp_path).grid_size == 16
    PinConfig(grid_size=8, image_size=processor.image_size).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"grid_size=16 .* grid_size=8"):
        PinProcessor.from_pretrained(tmp_path)


def test_pin_prompt_is_the_processors_prompt(processor):
    from groundvlm.processing.processing_pin import pin_prompt

    assert pin_prompt("apple") == "In the image is an apple located at"
    assert processor.build_prompt("red star") == pin_prompt("red star")
