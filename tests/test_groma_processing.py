"""GromaProcessor / GromaImageProcessor: tokens, exact prompts, slot layout, padding, referring boxes,
post_process_grounding, save/load through AutoProcessor in a fresh process, and bad-input errors.

Expected values are written out by hand (prompt strings, normalised boxes, pixel boxes), never produced by the
code under test.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from groundvlm.processing import GromaImageProcessor, GromaProcessor, add_groma_tokens, build_groma_prompt
from groundvlm.recipes.toyworld.tokenizers import train_tokenizer
from tests._isolated import run_isolated

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
FIRST = (
    " USER: Here is an image with region crops from it. Image: <image>. Regions: <region>."
    " ASSISTANT: Thank you for the image! How can I assist you with it?</s>"
)

ADDED = ["[PAD]", "<sep>", "<img>", "</img>", "<roi>", "</roi>", "<p>", "</p>", "<image>", "<region>",
         "<refer_box>", "<ground_box>", "<refer_feat>", "[grounding]"] + [f"<r{j}>" for j in range(100)]


def _tokenizer():
    corpus = [SYSTEM, FIRST, "Locate the dog in the image.", "What is this? A dog runs on the grass.",
              "Give me a concise description of the image."] * 4
    return train_tokenizer("llama", corpus)


@pytest.fixture(scope="module")
def tok():
    t = _tokenizer()
    add_groma_tokens(t)
    return t


@pytest.fixture(scope="module")
def proc(tok):
    return GromaProcessor(GromaImageProcessor(), tok)


def _image(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------ tokens / prompts
def test_add_groma_tokens_order_ids_and_idempotence():
    t = _tokenizer()
    base = len(t)
    assert add_groma_tokens(t) == 114
    assert t.convert_tokens_to_ids(ADDED) == list(range(base, base + 114))
    assert t.pad_token == "[PAD]" and t.pad_token_id == base
    assert add_groma_tokens(t) == 0 and len(t) == base + 114
    assert t.convert_tokens_to_ids(["<image>", "<region>", "<r0>", "<r99>"]) == [base + 8, base + 9, base + 14, base + 113]


def test_exact_prompt_strings_python_and_jinja(proc):
    plain = build_groma_prompt("What color is the car?")
    assert plain == SYSTEM + FIRST + "USER: What color is the car? ASSISTANT:"
    grounded = build_groma_prompt("Give me a concise description of the image.", grounding=True)
    assert grounded == SYSTEM + FIRST + "USER: [grounding]Give me a concise description of the image. ASSISTANT:"
    referring = build_groma_prompt("What is <refer>?")
    assert referring == SYSTEM + FIRST + "USER: What is <refer>? ASSISTANT:"

    def msgs(text):
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    assert proc.apply_chat_template(msgs("What color is the car?"), add_generation_prompt=True) == plain
    assert (
        proc.apply_chat_template(msgs("Give me a concise description of the image."), add_generation_prompt=True,
                                 grounding=True)
        == grounded
    )
    multi = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Locate <p>a dog</p> in the image."},
        {"role": "assistant", "content": "<roi><r3></roi>"},
        {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "the cat?"}]},
    ]
    expected = ("Be brief." + FIRST + "USER: Locate <p>a dog</p> in the image. ASSISTANT: <roi><r3></roi></s>"
                "USER: And the cat? ")
    assert build_groma_prompt(multi, add_generation_prompt=False) == expected
    assert proc.apply_chat_template(multi) == expected
    assert proc.apply_chat_template(multi, add_generation_prompt=True) == expected + "ASSISTANT:"


def test_slot_layout_and_token_counts(proc, tok):
    prompt = build_groma_prompt("What is this?")
    out = proc(images=_image(60, 80), text=prompt)
    ids = out["input_ids"][0].tolist()
    image_id, region_id = tok.convert_tokens_to_ids(["<image>", "<region>"])
    proxies = tok.convert_tokens_to_ids([f"<r{j}>" for j in range(100)])
    assert ids.count(image_id) == 256 and ids.count(region_id) == 100
    first = ids.index(image_id)
    assert ids[first:first + 256] == [image_id] * 256  # contiguous
    region_pos = [p for p, t in enumerate(ids) if t == region_id]
    assert [ids[p - 1] for p in region_pos] == proxies
    assert region_pos == [region_pos[0] + 2 * j for j in range(100)]  # <r0><region><r1><region>... contiguous
    # the single placeholders grow by 255 and 199 tokens: the rest tokenizes as the plain prompt does
    assert len(ids) == len(tok(prompt)["input_ids"]) + 255 + 199
    assert ids[0] == tok.bos_token_id
    assert (proc.image_token_id, proc.region_token_id, proc.proxy_token_ids) == (image_id, region_id, proxies)


def test_left_padding_of_a_mixed_length_batch(proc, tok):
    short, long = build_groma_prompt("Hi?"), build_groma_prompt("Locate <p>the dog on the grass</p> in the image.")
    imgs = [_image(30, 40, 1), _image(50, 20, 2)]
    batch = proc(images=imgs, text=[short, long])
    single = [proc(images=[im], text=[t])["input_ids"][0] for im, t in zip(imgs, [short, long])]
    n_short, n_long = len(single[0]), len(single[1])
    assert n_short < n_long and batch["input_ids"].shape == (2, n_long)
    pad = n_long - n_short
    assert batch["input_ids"][0, :pad].tolist() == [tok.pad_token_id] * pad
    assert torch.equal(batch["input_ids"][0, pad:], single[0]) and torch.equal(batch["input_ids"][1], single[1])
    assert batch["attention_mask"][0].tolist() == [0] * pad + [1] * n_short
    assert batch["attention_mask"][1].tolist() == [1] * n_long
    assert batch["pixel_values"].shape == (2, 3, 448, 448)
    assert batch["image_sizes"].tolist() == [[30, 40], [50, 20]]
    right = proc(images=imgs, text=[short, long], padding_side="right")
    assert right["input_ids"][0, -pad:].tolist() == [tok.pad_token_id] * pad


def test_pixel_values_are_pil_bicubic_448_with_imagenet_norm(proc):
    rgba = Image.fromarray(np.random.default_rng(3).integers(0, 256, (37, 91, 4), dtype=np.uint8), "RGBA")
    out = GromaImageProcessor()([_image(37, 91, 4), rgba], return_tensors="pt")
    for k, im in enumerate([_image(37, 91, 4), rgba.convert("RGB")]):
        ref = np.asarray(im.resize((448, 448), Image.BICUBIC), dtype=np.float64) / 255.0
        ref = (ref - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        np.testing.assert_allclose(out["pixel_values"][k].numpy(), ref.transpose(2, 0, 1), atol=1e-5)
    assert out["image_sizes"].tolist() == [[37, 91], [37, 91]]
    # a uint8 CHW tensor and HWC array give the same pixels as the PIL image
    arr = np.array(_image(37, 91, 4))
    for x in (arr, torch.from_numpy(arr).permute(2, 0, 1)):
        assert torch.equal(GromaImageProcessor()(x, return_tensors="pt")["pixel_values"][0], out["pixel_values"][0])


# ------------------------------------------------------------------------------------------------ referring
def test_refer_boxes_become_normalised_cxcywh(proc, tok):
    prompts = [build_groma_prompt("What is <refer>? And <roi><refer_box></roi><refer_feat>?"),
               build_groma_prompt("What is this?")]
    imgs = [_image(480, 640, 5), _image(100, 200, 6)]  # (h, w)
    out = proc(images=imgs, text=prompts, refer_boxes=[[[64, 48, 320, 432], [0, 0, 640, 480]], None])
    # box 1: cx=(64+320)/2/640=0.3, cy=(48+432)/2/480=0.5, w=256/640=0.4, h=384/480=0.8; box 2 = whole image
    expected = torch.tensor([[0.3, 0.5, 0.4, 0.8], [0.5, 0.5, 1.0, 1.0]])
    assert torch.allclose(out["refer_boxes"][0], expected, atol=1e-6) and out["refer_boxes"][0].dtype == torch.float32
    assert out["refer_boxes"][1].shape == (0, 4)
    ids = out["input_ids"][0].tolist()
    assert ids.count(tok.convert_tokens_to_ids("<refer_box>")) == 2
    assert ids.count(tok.convert_tokens_to_ids("<refer_feat>")) == 2
    # single image: a bare (n, 4) tensor is accepted
    one = proc(images=imgs[1], text=build_groma_prompt("What is <refer>?"), refer_boxes=torch.tensor([[20.0, 10, 60, 90]]))
    assert torch.allclose(one["refer_boxes"][0], torch.tensor([[0.2, 0.5, 0.2, 0.8]]), atol=1e-6)
    assert "refer_boxes" not in proc(images=imgs[1], text=build_groma_prompt("Hi"))


def test_apply_chat_template_tokenized_matches_direct_call(proc):
    img = _image(40, 60, 7)
    conv = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "What is <refer>?"}]}]
    via_template = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            processor_kwargs={"refer_boxes": [[[10, 10, 30, 20]]]})
    direct = proc(images=img, text=build_groma_prompt("What is <refer>?"), refer_boxes=[[10, 10, 30, 20]])
    assert torch.equal(via_template["input_ids"], direct["input_ids"])
    assert torch.equal(via_template["pixel_values"], direct["pixel_values"])
    assert torch.equal(via_template["refer_boxes"][0], direct["refer_boxes"][0])


# ------------------------------------------------------------------------------------------------ post-processing
def _region_boxes():
    boxes = torch.zeros(8, 4)
    boxes[4] = torch.tensor([0.1, 0.2, 0.5, 0.6])
    boxes[7] = torch.tensor([0.0, 0.5, 1.0, 1.0])
    boxes[2] = torch.tensor([0.25, 0.25, 0.75, 0.75])
    return boxes


def test_post_process_grounded_phrase_on_original_size(proc, tok):
    # image of height 300, width 500: x * 500, y * 300
    dog = torch.tensor([[50.0, 60.0, 250.0, 180.0], [0.0, 150.0, 500.0, 300.0]])
    res = proc.post_process_grounding("<p>a dog</p><roi><r4><r7></roi> runs on <p>the grass</p><roi><r2></roi>.</s>",
                                      [_region_boxes()], [(300, 500)])
    (r,) = res
    assert r["parsed"] and r["reason"] is None
    assert r["text"] == "a dog runs on the grass."
    assert [p for p, _ in r["phrases"]] == ["a dog", "the grass"]
    assert torch.allclose(r["phrases"][0][1], dog)
    assert torch.allclose(r["phrases"][1][1], torch.tensor([[125.0, 75.0, 375.0, 225.0]]))
    assert r["boxes"].shape == (0, 4)

    # the same answer as token ids appended to a left-padded prompt, plus padding after </s>
    batch = proc(images=[_image(300, 500), _image(20, 20)], text=[build_groma_prompt("Hi"), build_groma_prompt("Describe.")])
    answer = tok("<p>a dog</p><roi><r4><r7></roi> runs.</s>", add_special_tokens=False)["input_ids"]
    seq = torch.cat([batch["input_ids"], torch.tensor([answer + [tok.pad_token_id]] * 2)], 1)
    res = proc.post_process_grounding(seq, [_region_boxes(), _region_boxes()], batch["image_sizes"])
    assert res[0]["text"] == "a dog runs." and res[0]["parsed"]
    assert res[0]["phrases"][0][0] == "a dog" and torch.allclose(res[0]["phrases"][0][1], dog)
    # second image is 20x20: same indices, other scale
    assert torch.allclose(res[1]["phrases"][0][1], torch.tensor([[2.0, 4.0, 10.0, 12.0], [0.0, 10.0, 20.0, 20.0]]))


def test_post_process_rec_out_of_range_and_garbage(proc):
    rec = proc.post_process_grounding("<roi><r2></roi></s>", _region_boxes(), (300, 500))[0]
    assert rec["parsed"] and rec["text"] == "" and rec["phrases"] == []
    assert torch.allclose(rec["boxes"], torch.tensor([[125.0, 75.0, 375.0, 225.0]]))

    oor = proc.post_process_grounding("<p>cat</p><roi><r2><r9></roi>", _region_boxes(), (300, 500))[0]
    assert oor["parsed"] and "<r9>" in oor["reason"] and "8 regions" in oor["reason"]
    assert oor["phrases"][0][0] == "cat" and oor["phrases"][0][1].shape == (1, 4)

    cut = proc.post_process_grounding("<roi><r4><r7>", _region_boxes(), (300, 500))[0]
    assert cut["parsed"] and cut["boxes"].shape == (2, 4) and "inside <roi>" in cut["reason"]

    plain = proc.post_process_grounding("It is red.</s>[PAD]", _region_boxes(), (300, 500))[0]
    assert plain == {"text": "It is red.", "phrases": [], "boxes": plain["boxes"], "parsed": True, "reason": None}
    assert plain["boxes"].shape == (0, 4)

    for garbage in ["<p>a <p>dog</p><roi><r1></roi>", "</roi><r3>", "<p>dog<r3></p>", "<roi>dog<r1></roi>",
                    "<roi><r1><roi></roi>", "</p></p>"]:
        g = proc.post_process_grounding(garbage, _region_boxes(), (300, 500))[0]
        assert g["parsed"] is False and g["phrases"] == [] and g["boxes"].shape == (0, 4), garbage
        assert g["reason"].startswith("malformed"), garbage


def test_post_process_mismatched_batch_is_an_error(proc):
    with pytest.raises(ValueError, match="must match"):
        proc.post_process_grounding(["a", "b"], [_region_boxes()], [(1, 1), (1, 1)])


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "boxes, match",
    [
        ([[0, 0, 10, 10]] * 101, "at most 100 regions"),
        ([[10, 10, 10, 20]], "degenerate"),
        ([[30, 10, 20, 20]], "degenerate"),
        ([[0, 0, 81, 20]], "outside the image"),
        ([[-1, 0, 20, 20]], "outside the image"),
        ([[0, 0, float("nan"), 20]], "not finite"),
        ([[0, 0, 10]], r"shape \(n, 4\)"),
    ],
)
def test_bad_refer_boxes(proc, boxes, match):
    n = len(boxes)
    text = build_groma_prompt("Compare " + " and ".join(["<refer>"] * n) + ".")
    with pytest.raises(ValueError, match=match):
        proc(images=_image(60, 80), text=text, refer_boxes=[boxes])


def test_bad_prompts_and_images(proc, tok):
    img = _image(60, 80)
    with pytest.raises(ValueError, match="0 `<image>`"):
        proc(images=img, text="What is this?")
    with pytest.raises(ValueError, match="2 `<image>`"):
        proc(images=img, text=build_groma_prompt("<image> again?"))
    with pytest.raises(ValueError, match=r"1 <refer_feat>.*but 0 refer_boxes"):
        proc(images=img, text=build_groma_prompt("What is <refer>?"))
    with pytest.raises(ValueError, match=r"0 <refer_feat>.*but 1 refer_boxes"):
        proc(images=img, text=build_groma_prompt("What is this?"), refer_boxes=[[0, 0, 5, 5]])
    with pytest.raises(ValueError, match="one image per prompt"):
        proc(images=[img, img], text=build_groma_prompt("Hi"))
    with pytest.raises(ValueError, match="images.*missing"):
        proc(text=build_groma_prompt("Hi"))
    with pytest.raises(ValueError, match="RGB"):
        proc(images=np.zeros((60, 80), np.uint8), text=build_groma_prompt("Hi"))
    with pytest.raises(ValueError, match="3 channels"):
        proc(images=np.zeros((60, 80, 4), np.uint8), text=build_groma_prompt("Hi"))
    with pytest.raises(ValueError, match="uint8"):
        proc(images=np.zeros((60, 80, 3), np.float32), text=build_groma_prompt("Hi"))
    # non-RGB PIL modes are converted exactly like the reference's Image.convert("RGB")
    gray = img.convert("L")
    assert torch.equal(proc(images=gray, text=build_groma_prompt("Hi"))["pixel_values"],
                       proc(images=gray.convert("RGB"), text=build_groma_prompt("Hi"))["pixel_values"])
    with pytest.raises(ValueError, match="add_groma_tokens"):
        GromaProcessor(GromaImageProcessor(), _tokenizer())


def test_truncation_into_visual_slots_is_an_error(proc):
    text = build_groma_prompt("Locate <p>the dog on the grass</p> in the image.")
    full = proc(images=_image(20, 20), text=text)["input_ids"].shape[1]
    with pytest.raises(ValueError, match="max_length=300 cut into prompt 0's Groma slots"):
        proc(images=_image(20, 20), text=text, truncation=True, max_length=300)
    # cutting only the end of the question keeps every slot: allowed
    kept = proc(images=_image(20, 20), text=text, truncation=True, max_length=full - 3)
    assert kept["input_ids"].shape[1] == full - 3


# ------------------------------------------------------------------------------------------------ save / load
@pytest.mark.remote_code
def test_save_and_reload_with_autoprocessor_in_fresh_process(proc, tmp_path):
    proc.save_pretrained(tmp_path / "groma_proc")
    images = [_image(300, 500, 8), _image(64, 32, 9)]
    for k, im in enumerate(images):
        im.save(tmp_path / f"im{k}.png")
    texts = [build_groma_prompt("What is <refer>?"), build_groma_prompt("Describe.", grounding=True)]
    boxes = [[[50, 60, 250, 180]], None]
    ours = proc(images=images, text=texts, refer_boxes=boxes)
    answer = "<p>a dog</p><roi><r4><r7></roi> runs.</s>"
    ours_post = proc.post_process_grounding([answer, "<roi><r2></roi>"], [_region_boxes()] * 2, ours["image_sizes"])
    code = f"""
import json, torch
from PIL import Image
from transformers import AutoProcessor
p = AutoProcessor.from_pretrained({str(tmp_path / 'groma_proc')!r}, trust_remote_code=True)
assert type(p).__name__ == "GromaProcessor" and type(p.image_processor).__name__ == "GromaImageProcessor"
assert "groundvlm" not in type(p).__module__
images = [Image.open({str(tmp_path)!r} + f"/im{{k}}.png") for k in range(2)]
out = p(images=images, text={texts!r}, refer_boxes={boxes!r})
boxes = torch.zeros(8, 4); boxes[4] = torch.tensor([0.1, 0.2, 0.5, 0.6]); boxes[7] = torch.tensor([0.0, 0.5, 1.0, 1.0])
boxes[2] = torch.tensor([0.25, 0.25, 0.75, 0.75])
post = p.post_process_grounding([{answer!r}, "<roi><r2></roi>"], [boxes, boxes], out["image_sizes"])
torch.save({{"input_ids": out["input_ids"], "attention_mask": out["attention_mask"],
            "pixel_values": out["pixel_values"], "image_sizes": out["image_sizes"], "refer_boxes": out["refer_boxes"],
            "post": post}}, {str(tmp_path / 'theirs.pt')!r})
print(json.dumps({{"template": p.chat_template, "n_img": p.num_image_tokens, "n_proxy": p.num_proxy_tokens}}))
"""
    meta = json.loads(run_isolated(code, cwd=tmp_path).strip().splitlines()[-1])
    assert meta == {"template": proc.chat_template, "n_img": 256, "n_proxy": 100}
    theirs = torch.load(tmp_path / "theirs.pt", weights_only=False)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(theirs[key], ours[key]), key
    assert all(torch.equal(a, b) for a, b in zip(theirs["refer_boxes"], ours["refer_boxes"]))
    for a, b in zip(theirs["post"], ours_post):
        assert (a["text"], a["parsed"], a["reason"]) == (b["text"], b["parsed"], b["reason"])
        assert [p for p, _ in a["phrases"]] == [p for p, _ in b["phrases"]]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a["phrases"], b["phrases"]))
        assert torch.equal(a["boxes"], b["boxes"])


def test_replacement_offsets_and_assistant_mask(proc, tok):
    prompt = build_groma_prompt("What is <refer>?")
    out = proc(images=_image(40, 60), text=prompt, refer_boxes=[[1, 1, 5, 5]], return_text_replacement_offsets=True)
    (offsets,) = out["text_replacement_offsets"]
    assert [prompt[slice(*r["span"])] for r in offsets] == ["<image>", "<region>", "<refer>"]
    expanded = tok.decode(out["input_ids"][0], skip_special_tokens=False)
    assert [r["new_span"][1] - r["new_span"][0] for r in offsets] == [7 * 256, sum(len(f"<r{j}><region>") for j in range(100)),
                                                                      len("<roi><refer_box></roi><refer_feat>")]
    assert expanded.count("<image>") == 256

    from transformers.processing_utils import ProcessorMixin

    if not hasattr(ProcessorMixin, "_adjust_assistant_masks_indices"):
        pytest.skip("this transformers version does not shift assistant masks past expanded placeholders")
    conv = [{"role": "user", "content": [{"type": "image", "image": _image(40, 60)}, {"type": "text", "text": "Locate it."}]},
            {"role": "assistant", "content": "<roi><r3></roi>"}]
    res = proc.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = torch.as_tensor(res["input_ids"][0]), torch.as_tensor(res["assistant_masks"][0]).bool()
    assert ids[mask].tolist() == tok("<roi><r3></roi></s>", add_special_tokens=False)["input_ids"]
