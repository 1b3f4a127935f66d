"""Groma end to end on one tiny vocabulary: GromaProcessor -> GromaForConditionalGeneration.generate
(return_dict_in_generate=True) -> GromaProcessor.post_process_grounding.

A random tiny model does not write grounding markup by itself, so a logits processor restricts each decoding step
to a set of ids (`<p>`, a word, a proxy token of an existing region, ...) and the model's own argmax picks within the
set. Expected phrases and pixel boxes are then computed here from the generated ids, the model's `region_boxes` and
the original image sizes — not by the post-processing code under test.
"""

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from groundvlm.processing import build_groma_prompt
from tests._groma_tiny import groma_tokenizer, random_image, tiny_groma_config, tiny_groma_processor, word_token_ids


class StepConstraints(LogitsProcessor):
    """Restrict decoding step t of row b to `plans[b][t]` (the last entry repeats).

    An entry is a list of allowed ids, or a callable `(row_ids) -> list of ids` that reads the sequence so far (the
    prompt as the model returns it, e.g. with `<refer_box>` resolved).
    """

    def __init__(self, prompt_length: int, plans: list[list]):
        self.prompt_length = prompt_length
        self.plans = plans

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        keep = torch.full_like(scores, float("-inf"))
        for row, plan in enumerate(self.plans):
            allowed = plan[min(step, len(plan) - 1)]
            keep[row, allowed(input_ids[row]) if callable(allowed) else allowed] = 0
        return scores + keep


@pytest.fixture(scope="module")
def setup():
    tok = groma_tokenizer()
    config = tiny_groma_config(tok)
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(config).eval()
    return tok, tiny_groma_processor(tok, config), model


def ids(tok, *tokens) -> list[int]:
    return tok.convert_tokens_to_ids(list(tokens))


def generate(model, inputs, plans, max_new_tokens):
    processors = LogitsProcessorList([StepConstraints(inputs["input_ids"].shape[1], plans)])
    return model.generate(
        **inputs,
        logits_processor=processors,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )


def pixels(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised xyxy -> pixel xyxy of a (height, width) image, written out independently of the processor."""
    return boxes.float() * torch.tensor([width, height, width, height], dtype=torch.float32)


def test_grounded_caption_end_to_end(setup):
    tok, proc, model = setup
    height, width = 90, 160
    image = random_image(height, width, seed=1)
    inputs = proc(images=image, text=build_groma_prompt("Describe the image briefly.", grounding=True))
    assert "[grounding]Describe" in tok.decode(inputs["input_ids"][0])
    regions = model.get_region_boxes(inputs["pixel_values"])[0]
    n = len(regions)
    words = word_token_ids(tok)
    proxies = [model.config.proxy_token_start_id + j for j in range(n)]
    p, p_end, roi, roi_end, eos = ids(tok, "<p>", "</p>", "<roi>", "</roi>", "</s>")
    plan = [[p], words, words, [p_end], [roi], proxies, proxies, [roi_end], words, [eos]]
    out = generate(model, inputs, [plan], max_new_tokens=len(plan))

    answer = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(answer) == len(plan) and answer[-1] == eos
    torch.testing.assert_close(out.region_boxes[0], regions)  # generate reports the regions `<r_j>` address
    w1, w2, w3 = (tok.convert_ids_to_tokens(answer[k]).removeprefix("▁") for k in (1, 2, 8))
    k1, k2 = (answer[k] - model.config.proxy_token_start_id for k in (5, 6))
    assert 0 <= k1 < n and 0 <= k2 < n

    (result,) = proc.post_process_grounding(out.sequences, out.region_boxes, inputs["image_sizes"])
    assert result["parsed"] and result["reason"] is None
    assert result["text"] == f"{w1} {w2} {w3}"
    assert [phrase for phrase, _ in result["phrases"]] == [f"{w1} {w2}"]
    expected = pixels(regions[[k1, k2]], height, width)
    torch.testing.assert_close(result["phrases"][0][1], expected)
    assert result["boxes"].shape == (0, 4)
    # pixel boxes lie on the caller's image, not on the 112x112 model input
    assert (result["phrases"][0][1][:, 0::2] <= width).all() and (result["phrases"][0][1][:, 1::2] <= height).all()


def test_referring_with_user_boxes_on_a_non_square_image(setup):
    tok, proc, model = setup
    cfg = model.config
    height, width = 90, 160
    user = torch.tensor([[16.0, 9.0, 80.0, 63.0], [100.0, 30.0, 150.0, 85.0]])  # pixel xyxy, disjoint
    inputs = proc(
        images=random_image(height, width, seed=2),
        text=build_groma_prompt("What is <refer> and <refer>?"),
        refer_boxes=[user],
    )
    refer_pos = (inputs["input_ids"][0] == cfg.refer_box_token_id).nonzero()[:, 0]
    feat_pos = (inputs["input_ids"][0] == cfg.refer_feat_token_id).nonzero()[:, 0]
    assert len(refer_pos) == len(feat_pos) == 2

    roi, roi_end, eos = ids(tok, "<roi>", "</roi>", "</s>")
    # A REC-style answer naming the two regions the prompt's <refer_box> tokens were resolved to, in prompt order.
    plan = [[roi], lambda row: [int(row[refer_pos[0]])], lambda row: [int(row[refer_pos[1]])], [roi_end], [eos]]
    out = generate(model, inputs, [plan], max_new_tokens=len(plan))

    resolved = out.sequences[0, refer_pos] - cfg.proxy_token_start_id
    assert cfg.refer_box_token_id not in out.sequences[0].tolist()
    n = len(out.region_boxes[0])
    assert ((0 <= resolved) & (resolved < n)).all() and resolved[0] != resolved[1]
    # the slot each <refer_box> became holds the caller's own box (score 1.0 keeps it through NMS)
    torch.testing.assert_close(pixels(out.region_boxes[0][resolved], height, width), user, atol=1e-3, rtol=0)

    # the <refer_feat> slots carry the region tokens of those slots, i.e. of the user boxes themselves
    prepared = model.prepare_multimodal_inputs(
        inputs["input_ids"], inputs["pixel_values"], refer_boxes=inputs["refer_boxes"]
    )
    region_pos = (inputs["input_ids"][0] == cfg.region_token_id).nonzero()[:, 0]
    embeds = prepared.inputs_embeds[0]
    torch.testing.assert_close(embeds[feat_pos], embeds[region_pos[resolved]])
    _, _, _, region_inputs = model.encode_images(inputs["pixel_values"])
    direct = model.region_encoder(region_inputs, [inputs["refer_boxes"][0]])[0]
    torch.testing.assert_close(embeds[feat_pos], direct, atol=1e-5, rtol=1e-5)

    (result,) = proc.post_process_grounding(out.sequences, out.region_boxes, inputs["image_sizes"])
    assert result["parsed"] and result["text"] == "" and result["phrases"] == []
    torch.testing.assert_close(result["boxes"], user, atol=1e-3, rtol=0)


def test_mixed_batch_equals_per_sample(setup):
    tok, proc, model = setup
    cfg = model.config
    sizes = [(90, 160), (200, 120), (64, 64)]  # (height, width)
    images = [random_image(h, w, seed=10 + i) for i, (h, w) in enumerate(sizes)]
    prompts = [
        build_groma_prompt("Describe the image briefly.", grounding=True),
        build_groma_prompt("What is <refer>?"),
        build_groma_prompt("Where is the red star on the left?"),
    ]
    refer = [None, [[10.0, 50.0, 90.0, 180.0]], None]
    batch_inputs = proc(images=images, text=prompts, refer_boxes=refer)
    counts = [len(b) for b in model.get_region_boxes(batch_inputs["pixel_values"], batch_inputs["refer_boxes"])]
    words = word_token_ids(tok)
    p, p_end, roi, roi_end, eos = ids(tok, "<p>", "</p>", "<roi>", "</roi>", "</s>")

    def proxies(i):
        return [cfg.proxy_token_start_id + j for j in range(counts[i])]

    plans = [
        [[p], words, words, [p_end], [roi], proxies(0), proxies(0), [roi_end], words, [eos]],
        [[roi], proxies(1), [roi_end], words, [eos]],
        [words, [p], words, [p_end], [roi], proxies(2), [roi_end], [eos]],
    ]
    max_new = max(map(len, plans))
    assert batch_inputs["attention_mask"][:, 0].tolist() != [1, 1, 1]  # mixed prompt lengths: left padding
    batched = generate(model, batch_inputs, plans, max_new)
    batched_results = proc.post_process_grounding(batched.sequences, batched.region_boxes, batch_inputs["image_sizes"])

    width = batch_inputs["input_ids"].shape[1]
    for i in range(3):
        single_inputs = proc(images=images[i], text=prompts[i], refer_boxes=None if refer[i] is None else [refer[i]])
        single = generate(model, single_inputs, [plans[i]], max_new)
        answer = single.sequences[0, single_inputs["input_ids"].shape[1] :].tolist()
        assert len(answer) == len(plans[i]) and answer[-1] == eos
        assert batched.sequences[i, width : width + len(answer)].tolist() == answer
        for step in range(len(answer)):  # the model's raw logits, before the step constraints
            torch.testing.assert_close(batched.logits[step][i], single.logits[step][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched.region_boxes[i], single.region_boxes[0])
        (expected,) = proc.post_process_grounding(single.sequences, single.region_boxes, single_inputs["image_sizes"])
        got = batched_results[i]
        assert got["parsed"] and expected["parsed"]
        assert (got["text"], got["reason"]) == (expected["text"], expected["reason"])
        assert [ph for ph, _ in got["phrases"]] == [ph for ph, _ in expected["phrases"]]
        for (_, a), (_, b) in zip(got["phrases"], expected["phrases"]):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(got["boxes"], expected["boxes"])

        # and the values themselves, from the ids and the regions
        h, w = sizes[i]
        chosen = [t - cfg.proxy_token_start_id for t in answer if t >= cfg.proxy_token_start_id]
        target = pixels(single.region_boxes[0][chosen], h, w)
        if i == 1:
            assert got["phrases"] == [] and got["text"] == tok.convert_ids_to_tokens(answer[3]).removeprefix("▁")
            torch.testing.assert_close(got["boxes"], target)
        else:
            phrase_word = answer[1] if i == 0 else answer[2]
            assert got["phrases"][0][0].split()[0] == tok.convert_ids_to_tokens(phrase_word).removeprefix("▁")
            torch.testing.assert_close(got["phrases"][0][1], target)
