"""Groma in bfloat16 (CPU): a left-padded batch of 4 (mixed image sizes, prompt lengths, one referring box) against
per-sample runs — what holds exactly, and the tight bound where it cannot.

Measured on the tiny model below (torch 2.14 CPU, AVX-512, 1-2 threads); max |logit| is about 0.7, where one bf16
step (ulp) is 2**-8 = 0.0039, so "within 1e-4" means "bitwise equal" for these logits:
- vision side (image tokens, proposals, fused region maps), region selection and order: bitwise equal.
- pad content: replacing every pad id changes no real-position logit (0.0): padding does not leak.
- each row run alone WITH its batch padding: prefill logits bitwise equal (batch composition is invisible).
- eager attention: prefill logits of the batch and of the unpadded per-sample prompts bitwise equal (0.0; also
  for every left padding 0..69 of one prompt): positions (cumsum of the mask) and masks are exact.
- SDPA (the default): per-sample vs batched prefill logits differ by up to 0.00195 (rows with 34/34/38 pads; 0 for
  the unpadded row) and generate's per-step logits by up to 0.0029, <= 1 ulp at each row's logit scale; the
  generated tokens are equal (the smallest top-2 margin on the way is 0.0039, one ulp: in bf16 a token CAN flip where
  two logits are that close). Not a batching bug, two kernel effects: (1) torch's CPU SDPA kernel reduces along the
  key axis in 16-lane fp32 vectors, so left padding moves the real keys across lane boundaries and changes the fp32
  summation order, which now and then rounds to a different bf16 (padding one prompt by k gives bitwise-equal logits
  for k mod 16 in {15, 0, 1, 2, 3} only; with eager attention for every k in 0..69). (2) in decoding steps a
  per-sample linear layer is a 1-row product (M=1, correctly rounded here) and a batched one a 4-row GEMM with
  another fp32 accumulation order: 1-ulp differences in a few outputs (also seen with eager attention, other seeds).
So the honest criterion for SDPA is: same tokens, same regions, logits within 2 bf16 ulps at the logit scale (2x
the measured worst case), compared after an exact upcast to fp32. Deeper models add noise per layer. The bound still
catches real bugs: attending the pads moves logits by 0.57 (~145 ulps); positions counting pads and masked pairs
(arange instead of cumsum of the mask) move them by 0.0039 here, which the eager 1e-4 test below catches.
The fp32 counterpart (1e-4) is tests/groma/test_groma_model.py / tests/groma/test_groma_end_to_end.py.
"""

import pytest
import torch

from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from groundvlm.processing import build_groma_prompt
from tests._groma_tiny import groma_tokenizer, random_image, tiny_groma_config, tiny_groma_processor

SIZES = [(90, 160), (200, 120), (64, 64), (150, 300)]  # (height, width), one image per prompt
PROMPTS = [
    build_groma_prompt("Describe the image briefly.", grounding=True),
    build_groma_prompt("What is <refer>?"),
    build_groma_prompt(
        [
            {"role": "user", "content": "Where is the red star on the left?"},
            {"role": "assistant", "content": "On the grass."},
            {"role": "user", "content": "And the blue ring of the green square?"},
        ]
    ),  # the longest prompt: its batch row has no padding
    build_groma_prompt("What is this?"),
]
REFER = [None, [[10.0, 50.0, 90.0, 180.0]], None, None]  # pixel xyxy on image 1
MAX_NEW = 8
GEN = {"max_new_tokens": MAX_NEW, "do_sample": False, "return_dict_in_generate": True, "output_logits": True}


def bf16_spacing(x: torch.Tensor) -> torch.Tensor:
    """Distance between adjacent bf16 numbers at |x| (x > 0): eps(1.0) = 2**-7 scaled by x's binade."""
    return torch.finfo(torch.bfloat16).eps * 2.0 ** torch.floor(torch.log2(x))


def assert_within_ulps(got: torch.Tensor, expected: torch.Tensor, ulps: int):
    """|got - expected| <= ulps bf16 steps at the scale of the logits (their max |value|), compared in fp32."""
    got, expected = got.float(), expected.float()
    bound = ulps * bf16_spacing(expected.abs().max())
    diff = (got - expected).abs().max()
    assert diff <= bound, f"max |diff| {diff.item():.3g} > {ulps} bf16 ulps at the logit scale ({bound.item():.3g})"


@pytest.fixture(scope="module")
def setup():
    tok = groma_tokenizer()
    config = tiny_groma_config(tok)
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(config).eval().to(torch.bfloat16)
    proc = tiny_groma_processor(tok, config)
    images = [random_image(h, w, seed=10 + i) for i, (h, w) in enumerate(SIZES)]
    batch = proc(images=images, text=PROMPTS, refer_boxes=REFER)
    singles = [
        proc(images=images[i], text=PROMPTS[i], refer_boxes=None if REFER[i] is None else [REFER[i]]) for i in range(4)
    ]
    lengths = [s["input_ids"].shape[1] for s in singles]
    assert len(set(lengths)) == 3 and batch["input_ids"].shape[1] == max(lengths)  # mixed lengths, left padded
    return tok, model, batch, singles


def row(batch, i):
    """Row i of the batch as a batch of one, its left padding kept."""
    out = {k: batch[k][i : i + 1] for k in ("input_ids", "attention_mask", "pixel_values")}
    out["refer_boxes"] = [batch["refer_boxes"][i]]
    return out


def test_same_inputs_same_regions_and_output_on_every_run(setup):
    _, model, batch, _ = setup
    first = model.generate(**batch, **GEN)
    second = model.generate(**batch, **GEN)
    assert torch.equal(first.sequences, second.sequences)
    assert all(torch.equal(a, b) for a, b in zip(first.logits, second.logits))
    assert all(torch.equal(a, b) for a, b in zip(first.region_boxes, second.region_boxes))


def test_vision_side_and_region_selection_are_batch_invariant(setup):
    _, model, batch, singles = setup
    with torch.no_grad():
        batched = model.perceive(batch["pixel_values"])
        batched_regions = model.get_region_boxes(batch["pixel_values"], batch["refer_boxes"])
        for i, single_inputs in enumerate(singles):
            single = model.perceive(single_inputs["pixel_values"])
            for a, b in zip(batched[:3], single[:3]):  # image tokens, proposal boxes, proposal scores
                assert torch.equal(a[i : i + 1], b)
            assert all(torch.equal(a[i : i + 1], b) for a, b in zip(batched[3], single[3]))  # fused region maps
            regions = model.get_region_boxes(single_inputs["pixel_values"], single_inputs.get("refer_boxes"))[0]
            assert torch.equal(batched_regions[i], regions)  # same boxes in the same slot order
    # the referred sample holds the caller's box among its regions (score 1.0 survives NMS)
    h, w = SIZES[1]
    user = torch.tensor(REFER[1][0]) / torch.tensor([w, h, w, h])
    assert torch.isclose(batched_regions[1].float(), user, atol=1e-2).all(1).any()


def test_padding_does_not_leak_and_batch_composition_is_invisible(setup):
    tok, model, batch, _ = setup
    with torch.no_grad():
        out = model(**batch)
        real = out.attention_mask.bool()
        assert (~real[:, 0]).sum() == 3  # three rows are left padded
        other_pad = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, tok.convert_tokens_to_ids("▁dog"))
        swapped = model(**{**batch, "input_ids": other_pad})
        assert torch.equal(out.logits[real], swapped.logits[real])
        for i in range(4):
            alone = model(**row(batch, i))
            assert torch.equal(out.logits[i][real[i]], alone.logits[0][real[i]])


def test_eager_attention_prefill_equals_per_sample_within_1e4(setup):
    _, model, batch, singles = setup
    model.language_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**batch)
            width = batch["input_ids"].shape[1]
            for i, single_inputs in enumerate(singles):
                single = model(**single_inputs)
                real = single.attention_mask[0].bool()
                start = width - single_inputs["input_ids"].shape[1]
                # measured: 0.0 (bitwise); 1e-4 is below one bf16 step at these logits (~0.7 -> 0.0039)
                torch.testing.assert_close(
                    out.logits[i, start:][real].float(), single.logits[0][real].float(), atol=1e-4, rtol=0
                )
    finally:
        model.language_model.set_attn_implementation("sdpa")


def test_sdpa_generate_same_tokens_and_logits_within_two_bf16_ulps(setup):
    _, model, batch, singles = setup
    assert model.language_model.config._attn_implementation == "sdpa"
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        prefill = model(**batch)
    batched = model.generate(**batch, **GEN)
    for i, single_inputs in enumerate(singles):
        length = single_inputs["input_ids"].shape[1]
        with torch.no_grad():
            single_prefill = model(**single_inputs)
        real = single_prefill.attention_mask[0].bool()
        # measured max |diff| over the 4 rows: 0.00195 (0 for the unpadded row 2)
        assert_within_ulps(prefill.logits[i, width - length :][real], single_prefill.logits[0][real], ulps=2)

        single = model.generate(**single_inputs, **GEN)
        assert batched.sequences[i, width:].tolist() == single.sequences[0, length:].tolist()
        assert torch.equal(batched.sequences[i, width - length : width], single.sequences[0, :length])
        assert torch.equal(batched.region_boxes[i], single.region_boxes[0])
        assert len(batched.logits) == len(single.logits) == MAX_NEW
        for step_batched, step_single in zip(batched.logits, single.logits):
            # measured max |diff| over rows and steps: 0.0029 (<= 1 ulp at the row's logit scale)
            assert_within_ulps(step_batched[i], step_single[0], ulps=2)
