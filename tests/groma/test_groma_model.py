"""GromaForConditionalGeneration on a tiny config: static layout, batching, determinism, generate, bad inputs."""

import pytest
import torch

from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from tests._groma_tiny import BASE_VOCAB, tiny_groma_config

IMAGE, REGION, REFER_BOX, REFER_FEAT, ROI, ROI_END = (BASE_VOCAB + k for k in (8, 9, 10, 12, 4, 5))
PROXY = BASE_VOCAB + 14


def static_prompt(cfg, before=(1, 5, 6), after=(8, 9), n_refer=0):
    """What the processor builds: <image> x num_image_tokens, then pairs <r_j><region> for every proxy token."""
    ids = list(before) + [cfg.image_token_id] * cfg.num_image_tokens + [11]
    ids += [t for j in range(cfg.num_proxy_tokens) for t in (cfg.proxy_token_start_id + j, cfg.region_token_id)]
    ids += [12] + [t for _ in range(n_refer) for t in (ROI, REFER_BOX, ROI_END, REFER_FEAT)] + list(after)
    return ids


def left_pad(rows, pad):
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GromaForConditionalGeneration(tiny_groma_config()).eval()


def test_forward_fills_slots_and_masks_unused_pairs(model):
    cfg = model.config
    ids = torch.tensor([static_prompt(cfg)])
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 112, 112))
    n = len(out.region_boxes[0])
    assert 1 <= n <= cfg.max_region_num
    region_pos = (ids[0] == REGION).nonzero()[:, 0]
    # pair j is attended iff j < N, both tokens of the pair
    assert out.attention_mask[0, region_pos].tolist() == [1] * n + [0] * (100 - n)
    assert out.attention_mask[0, region_pos - 1].tolist() == [1] * n + [0] * (100 - n)
    assert int(out.attention_mask.sum()) == ids.shape[1] - 2 * (100 - n)
    boxes = out.region_boxes[0]
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2:] >= boxes[:, :2]).all()


def test_region_order_is_deterministic_and_by_score(model):
    px = torch.randn(2, 3, 112, 112)
    first = model.get_region_boxes(px)
    second = model.get_region_boxes(px)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    _, boxes, scores, _ = model.encode_images(px)
    selected = model.select_regions(boxes, scores, [torch.zeros(0, 4)] * 2)
    for i, sel in enumerate(selected):
        # every selected box is a proposal; their scores are non-increasing in slot order
        idx = [int((boxes[i] == b).all(-1).nonzero()[0]) for b in sel]
        assert scores[i, idx].diff().le(0).all()


def test_masked_pairs_equal_the_dynamically_expanded_sequence(model):
    """Static layout + masked pairs gives the logits of a prompt that holds only the N used pairs (cumsum positions)."""
    cfg = model.config
    px = torch.randn(1, 3, 112, 112)
    ids = torch.tensor([static_prompt(cfg)])
    out = model(input_ids=ids, pixel_values=px)
    keep = out.attention_mask[0].bool()
    prepared = model.prepare_multimodal_inputs(ids, px)
    embeds = prepared.inputs_embeds[:, keep]
    compact = model.language_model(inputs_embeds=embeds).logits
    torch.testing.assert_close(out.logits[:, keep], compact, rtol=1e-5, atol=1e-5)


def test_batched_generation_equals_per_sample_in_fp32(model):
    cfg = model.config
    torch.manual_seed(1)
    prompts = [
        static_prompt(cfg, before=(1,) + tuple(range(5, 5 + k)), after=tuple(range(30, 30 + 2 * k)))
        for k in (1, 4, 2, 7)
    ]
    prompts[2] = static_prompt(cfg, n_refer=1)
    refer = [torch.zeros(0, 4), torch.zeros(0, 4), torch.tensor([[0.4, 0.5, 0.3, 0.2]]), torch.zeros(0, 4)]
    px = torch.randn(4, 3, 112, 112)
    ids, mask = left_pad(prompts, cfg.pad_token_id)
    batched = model.generate(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=px,
        refer_boxes=refer,
        max_new_tokens=6,
        do_sample=False,
        return_dict_in_generate=True,
    )
    again = model.generate(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=px,
        refer_boxes=refer,
        max_new_tokens=6,
        do_sample=False,
        return_dict_in_generate=True,
    )
    assert torch.equal(batched.sequences, again.sequences)
    for i in range(4):
        single = model.generate(
            input_ids=torch.tensor([prompts[i]]),
            pixel_values=px[i : i + 1],
            refer_boxes=[refer[i]],
            max_new_tokens=6,
            do_sample=False,
            return_dict_in_generate=True,
        )
        assert batched.sequences[i, -6:].tolist() == single.sequences[0, -6:].tolist()
        torch.testing.assert_close(batched.region_boxes[i], single.region_boxes[0])
        # the prompt comes back with <refer_box> resolved to a proxy token
        assert REFER_BOX not in single.sequences[0].tolist()
    assert (batched.sequences[2] >= PROXY).any()


def test_generate_runs_the_perceiver_once(model):
    cfg = model.config
    calls = []
    handle = model.vision_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        model.generate(
            input_ids=torch.tensor([static_prompt(cfg)]),
            pixel_values=torch.randn(1, 3, 112, 112),
            max_new_tokens=4,
            do_sample=False,
        )
    finally:
        handle.remove()
    assert len(calls) == 1


def test_bf16_forward_accepts_fp32_pixels():
    model = GromaForConditionalGeneration(tiny_groma_config()).eval().to(torch.bfloat16)
    out = model(input_ids=torch.tensor([static_prompt(model.config)]), pixel_values=torch.randn(1, 3, 112, 112))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()


def test_labels_ignore_visual_slots(model):
    cfg = model.config
    ids = torch.tensor([static_prompt(cfg)])
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 112, 112), labels=ids.clone())
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "case, message",
    [
        ("too_many_boxes", "proxy tokens"),
        ("degenerate_box", "degenerate"),
        ("outside_box", "outside the image"),
        ("missing_image", "no <image>"),
        ("truncated", "truncated"),
        ("box_count_mismatch", "must match"),
        ("wrong_pixels", "pixel_values must have shape"),
        ("image_without_pixels", "no pixel_values"),
    ],
)
def test_bad_inputs_raise_clear_errors(model, case, message):
    cfg = model.config
    ids = static_prompt(cfg, n_refer=1)
    px = torch.randn(1, 3, 112, 112)
    refer = [torch.tensor([[0.5, 0.5, 0.2, 0.2]])]
    if case == "too_many_boxes":
        refer = [torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 101)]
    elif case == "degenerate_box":
        refer = [torch.tensor([[0.5, 0.5, 0.0, 0.2]])]
    elif case == "outside_box":
        refer = [torch.tensor([[0.95, 0.5, 0.3, 0.2]])]
    elif case == "missing_image":
        ids = [t for t in ids if t != IMAGE]
    elif case == "truncated":
        ids = ids[: 3 + cfg.num_image_tokens - 4]
    elif case == "box_count_mismatch":
        refer = [torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)]
    elif case == "wrong_pixels":
        px = torch.randn(1, 1, 112, 112)
    with pytest.raises(ValueError, match=message):
        if case == "image_without_pixels":
            model(input_ids=torch.tensor([ids]))
        else:
            model(input_ids=torch.tensor([ids]), pixel_values=px, refer_boxes=refer)


def test_vision_side_in_chunks_equals_one_pass(model):
    """`config.vision_batch_size` cuts the vision side into chunks (bounded memory); the prefill it builds — ids with
    resolved user boxes, mask, embeddings, regions — and the greedy answers equal one pass over the whole batch."""
    cfg = model.config
    prompts = [static_prompt(cfg, before=(1,) + tuple(range(5, 5 + k))) for k in (1, 3, 2, 4, 1)]
    prompts[3] = static_prompt(cfg, n_refer=1)
    refer = [torch.zeros(0, 4)] * 3 + [torch.tensor([[0.4, 0.5, 0.3, 0.2]]), torch.zeros(0, 4)]
    ids, mask = left_pad(prompts, cfg.pad_token_id)
    px = torch.randn(5, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    runs, default = {}, model.config.vision_batch_size
    try:
        for size in (None, 2):
            model.config.vision_batch_size = size
            with torch.no_grad():
                prepared = model.prepare_multimodal_inputs(ids, px, mask, refer)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=px,
                refer_boxes=refer,
                max_new_tokens=4,
                do_sample=False,
            )
            runs[size] = (prepared, out)
    finally:
        model.config.vision_batch_size = default
    (one, one_out), (chunked, chunked_out) = runs[None], runs[2]
    assert torch.equal(one.input_ids, chunked.input_ids) and torch.equal(one.attention_mask, chunked.attention_mask)
    torch.testing.assert_close(chunked.inputs_embeds, one.inputs_embeds, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.image_hidden_states, one.image_hidden_states, rtol=1e-5, atol=1e-6)
    assert [len(b) for b in one.region_boxes] == [len(b) for b in chunked.region_boxes]
    for a, b in zip(one.region_boxes, chunked.region_boxes):
        torch.testing.assert_close(b, a)
    assert torch.equal(one_out, chunked_out)


def test_vision_batch_size_is_checked():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="vision_batch_size"):
            tiny_groma_config(vision_batch_size=bad)
    assert tiny_groma_config().vision_batch_size == 16
