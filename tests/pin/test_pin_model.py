"""PinForLocalization: insert shape and size, exact equality with the base when π = 0, caching, bad input."""

import math

import pytest
import torch
from PIL import Image
from transformers import Blip2Processor, OPTConfig, OPTForCausalLM

from groundvlm.modeling import PinConfig, PinForLocalization, VPGTransConfig, VPGTransModel
from groundvlm.modeling.pin_insert import PinInsert, sinusoid_table
from groundvlm.processing import PinProcessor
from tests._pin_tiny import blip_image_processor, llava_processor, make_tokenizer, tiny_blip2, tiny_llava


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "num_positions, dim, expected",
    [
        # Linear(64,512) + LN(512) + Linear(512,768) + LN(768) + Linear(768,D), weights + biases:
        # 64*512+512 + 2*512 + 512*768+768 + 2*768 + 768*D+D = 429,824 + 769*D.
        (256, 1024, 1_217_280),  # OpenFlamingo (CLIP ViT-L/14), the paper's "≈1.2M"
        (257, 1408, 1_512_576),  # BLIP-2 (EVA ViT-g)
    ],
)
def test_parameter_count_matches_reference(num_positions, dim, expected):
    insert = PinInsert(num_positions=num_positions, output_dim=dim)
    assert _count(insert) == expected == 429_824 + 769 * dim
    # The reference's nn.Sequential layout (keys 0, 2, 3, 5, 6) so its checkpoints load as `psi.*`.
    assert sorted({k.split(".")[0] for k in insert.psi.state_dict()}) == ["0", "2", "3", "5", "6"]
    assert [type(m).__name__ for m in insert.psi] == ["Linear", "SiLU", "LayerNorm"] * 2 + ["Linear"]
    assert "sinusoid" not in insert.state_dict()  # fixed table, rebuilt from the config, never saved
    assert insert().shape == (num_positions, dim)


def test_sinusoid_table_values():
    table = sinusoid_table(5, 64)
    assert table.shape == (5, 64)
    # Position 0: sin(0) = 0 on even dims, cos(0) = 1 on odd dims.
    assert torch.equal(table[0, 0::2], torch.zeros(32)) and torch.equal(table[0, 1::2], torch.ones(32))
    # Dims 0/1 share the frequency 1; dims 2/3 use 10000^(2/64).
    assert table[3, 0].item() == pytest.approx(math.sin(3.0), abs=1e-7)
    assert table[3, 1].item() == pytest.approx(math.cos(3.0), abs=1e-7)
    assert table[4, 2].item() == pytest.approx(math.sin(4 / 10000 ** (2 / 64)), abs=1e-7)
    assert table[4, 63].item() == pytest.approx(math.cos(4 / 10000 ** (62 / 64)), abs=1e-7)


def _images():
    return [Image.new("RGB", (300, 200), (200, 30, 30)), Image.new("RGB", (120, 160), (20, 200, 90))]


@pytest.fixture(scope="module")
def opt_tokenizer():
    return make_tokenizer("opt")


@pytest.fixture(scope="module")
def llama_tokenizer():
    return make_tokenizer("llama")


def _setup(kind, opt_tokenizer, llama_tokenizer):
    """(base, pin, processor) for one supported base kind."""
    if kind == "llava":
        base = tiny_llava(llama_tokenizer)
        processor = PinProcessor.from_base_processor(llava_processor(llama_tokenizer))
    else:
        cls, config_cls = {"blip2": (None, None), "vpgtrans": (VPGTransModel, VPGTransConfig)}[kind]
        base = tiny_blip2(opt_tokenizer, **({"cls": cls, "config_cls": config_cls} if cls else {}))
        processor = PinProcessor.from_base_processor(
            Blip2Processor(image_processor=blip_image_processor(), tokenizer=opt_tokenizer, num_query_tokens=4)
        )
    return base, PinForLocalization.from_base(base), processor


@pytest.mark.parametrize("kind", ["blip2", "vpgtrans", "llava"])
def test_zero_insert_equals_base_exactly(kind, opt_tokenizer, llama_tokenizer):
    base, pin, processor = _setup(kind, opt_tokenizer, llama_tokenizer)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    assert pin.config.base_architecture == type(base).__name__
    assert (pin.config.num_positions, pin.config.vision_hidden_size) == ((16, 32) if kind == "llava" else (17, 32))
    inputs = processor(images=_images(), objects=["cat", "apple"])

    with torch.no_grad():
        base_logits = base(**inputs).logits
        random_logits = pin(**inputs).logits
        # π ≠ 0 must reach the LLM ...
        assert (random_logits - base_logits).abs().max() > 1e-3
        # ... and deactivated PIN is the base.
        assert torch.equal(pin(**inputs, use_pin=False).logits, base_logits)
        pin.pin.psi[-1].weight.zero_()
        pin.pin.psi[-1].bias.zero_()
        assert torch.equal(pin.positional_insert(), torch.zeros(pin.config.num_positions, 32))
        assert torch.equal(pin(**inputs).logits, base_logits)

    generate_kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=1)
    base_ids = base.generate(**inputs, **generate_kwargs)
    assert torch.equal(pin.generate(**inputs, **generate_kwargs), base_ids)
    assert torch.equal(pin.generate(**inputs, use_pin=False, **generate_kwargs), base_ids)
    # The base is untouched: same weights, frozen, and calling it directly gives its own output (no hook left).
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert not any(p.requires_grad for p in pin.vlm.parameters())
    with torch.no_grad():
        assert torch.equal(base(**inputs).logits, base_logits)


def test_nonzero_insert_changes_generation_and_reaches_gradients(opt_tokenizer, llama_tokenizer):
    base, pin, processor = _setup("blip2", opt_tokenizer, llama_tokenizer)
    inputs = processor(images=_images(), objects=["cat", "apple"], boxes=[[0, 0, 150, 100], [10, 20, 60, 100]])
    pin.train()
    assert pin.training and not pin.vlm.training  # the frozen base never runs dropout
    out = pin(**inputs)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pin.pin.parameters())
    assert all(p.grad is None for p in pin.vlm.parameters())
    # The loss is the base's: causal-LM cross-entropy on the target span only.
    with torch.no_grad():
        base_out = base(**inputs)
    assert out.loss.item() != pytest.approx(base_out.loss.item())


def test_cached_insert_is_fresh_after_optimizer_step_and_load(opt_tokenizer, llama_tokenizer):
    _, pin, processor = _setup("blip2", opt_tokenizer, llama_tokenizer)
    insert = pin.pin
    with torch.no_grad():
        first = insert()
        assert insert() is first  # computed once while ψ does not change
        assert torch.equal(first, insert.psi(insert.sinusoid))
    inputs = processor(images=_images(), objects=["cat", "apple"], boxes=[[0, 0, 150, 100], [10, 20, 60, 100]])
    for foreach in (False, True):
        optimizer = torch.optim.Adam(insert.parameters(), lr=1e-2, foreach=foreach)
        pin.train()
        pin(**inputs).loss.backward()
        optimizer.step()
        with torch.no_grad():
            cached = insert()
            assert not torch.equal(cached, first)
            assert torch.equal(cached, insert.psi(insert.sinusoid))
            first = cached
    # With gradients wanted, π is rebuilt each call (a cached graph would be freed by backward()).
    assert insert().requires_grad and insert() is not insert()
    # load_state_dict invalidates the cache too.
    state = {k: torch.zeros_like(v) for k, v in insert.state_dict().items()}
    insert.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(insert(), torch.zeros_like(first))


def test_bad_inputs_raise_clear_errors(opt_tokenizer, llama_tokenizer):
    opt = OPTForCausalLM(
        OPTConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="Unknown PIN base architecture 'OPTForCausalLM'"):
        PinForLocalization.from_base(opt)
    base, pin, processor = _setup("blip2", opt_tokenizer, llama_tokenizer)
    with pytest.raises(ValueError, match="base_architecture"):
        PinForLocalization(PinConfig(base_architecture="LlavaForConditionalGeneration"), base_model=base)
    with pytest.raises(ValueError, match=r"expects vision tokens of shape \(257, 1408\)"):
        PinForLocalization(PinConfig(base_architecture="Blip2ForConditionalGeneration"), base_model=base)
    with pytest.raises(ValueError, match="wraps a base VLM"):
        PinForLocalization(pin.config)

    inputs = processor(images=_images(), objects=["cat", "apple"])
    small = torch.zeros(2, 3, 112, 112)
    for call in (pin, pin.generate):
        with pytest.raises(ValueError, match="must be 224x224"):
            call(pixel_values=small, input_ids=inputs["input_ids"])
        with pytest.raises(ValueError, match="RGB"):
            call(pixel_values=torch.zeros(2, 1, 224, 224), input_ids=inputs["input_ids"])
        with pytest.raises(ValueError, match="one row per image"):
            call(pixel_values=inputs["pixel_values"][:1], input_ids=inputs["input_ids"])
        with pytest.raises(ValueError, match="exactly 4 image tokens"):
            call(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"][:, 2:])
        with pytest.raises(ValueError, match="needs pixel_values"):
            call(input_ids=inputs["input_ids"])


def test_from_pretrained_loads_base_then_insert(tmp_path, opt_tokenizer, llama_tokenizer):
    """In-process round trip (the fresh-process one is in test_pin_remote.py): adapter-only and include_base."""
    base, pin, processor = _setup("llava", opt_tokenizer, llama_tokenizer)
    base.save_pretrained(tmp_path / "base")
    pin.config.base_model_name_or_path = str(tmp_path / "base")
    pin.save_pretrained(tmp_path / "pin", include_base=False)
    pin.save_pretrained(tmp_path / "full", include_base=True)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "pin" / "model.safetensors")
    assert sorted(saved) == sorted(f"pin.{k}" for k in pin.pin.state_dict())  # ψ only, no base weights
    assert pin.config.base_subfolder is None  # include_base does not leak into later saves
    inputs = processor(images=_images(), objects=["cat", "apple"])
    with torch.no_grad():
        expected = pin(**inputs).logits
        for folder in ("pin", "full"):
            loaded = PinForLocalization.from_pretrained(tmp_path / folder)
            assert not loaded.training
            assert torch.equal(loaded(**inputs).logits, expected)
    with pytest.raises(ValueError, match="trained on a 'llava' base"):
        PinForLocalization.from_pretrained(tmp_path / "pin", base_model=tiny_blip2(opt_tokenizer))
