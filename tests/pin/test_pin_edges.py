"""PIN edges a new user meets: image and name inputs the processor must take or refuse clearly, a folder of
another model type, and a saved PIN that must load on another machine."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Blip2Processor

from groundvlm.modeling import PinForLocalization
from groundvlm.processing import PinProcessor
from tests._pin_tiny import blip_image_processor, make_tokenizer, tiny_blip2


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer("opt")


@pytest.fixture(scope="module")
def processor(tokenizer):
    base = Blip2Processor(image_processor=blip_image_processor(), tokenizer=tokenizer, num_query_tokens=4)
    return PinProcessor.from_base_processor(base)


def test_channels_first_tensor_is_accepted_like_the_same_pil_image(processor):
    hwc = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    from_tensor = processor(torch.from_numpy(hwc).permute(2, 0, 1), "cat", boxes=[[6, 4, 30, 20]])
    from_pil = processor(Image.fromarray(hwc), "cat", boxes=[[6, 4, 30, 20]])
    assert torch.allclose(from_tensor["pixel_values"], from_pil["pixel_values"], atol=1e-5)
    assert torch.equal(from_tensor["labels"], from_pil["labels"])  # the box was scaled by (H=40, W=60)


def test_empty_image_and_overlong_name_are_clear_errors(processor):
    with pytest.raises(ValueError, match=r"empty image \(0x0 pixels\)"):
        processor(np.zeros((0, 0, 3), dtype=np.uint8), "cat")
    with pytest.raises(ValueError, match=r"tokens long; PIN prompts take names of at most 64 tokens"):
        processor(Image.new("RGB", (32, 32)), " ".join(["word"] * 2000))
    processor(Image.new("RGB", (32, 32)), "small red cube on the left")  # an ordinary expression passes


@pytest.fixture()
def saved(tmp_path, tokenizer):
    """A base saved in a local folder and a PIN that references it by that path."""
    base = tiny_blip2(tokenizer)
    base.save_pretrained(tmp_path / "cache" / "base")
    pin = PinForLocalization.from_base(base, base_model_name_or_path=str(tmp_path / "cache" / "base"))
    return pin, tmp_path


def test_default_save_of_a_locally_loaded_base_loads_after_the_base_is_gone(saved):
    pin, tmp_path = saved
    pin.save_pretrained(tmp_path / "pin")
    assert (tmp_path / "pin" / "base" / "config.json").is_file()
    shutil.rmtree(tmp_path / "cache")  # another machine: the original base folder does not exist
    loaded = PinForLocalization.from_pretrained(tmp_path / "pin")
    assert torch.equal(loaded.positional_insert(), pin.positional_insert())


def test_hub_id_reference_is_kept_and_a_missing_local_path_says_what_to_do(saved):
    pin, tmp_path = saved
    pin.config.base_model_name_or_path = "some-org/some-base"
    pin.save_pretrained(tmp_path / "by_id")
    assert not (tmp_path / "by_id" / "base").exists()
    assert (
        json.loads((tmp_path / "by_id" / "config.json").read_text())["base_model_name_or_path"] == "some-org/some-base"
    )

    pin.config.base_model_name_or_path = str(tmp_path / "cache" / "base")
    pin.save_pretrained(tmp_path / "by_path", include_base=False)
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(ValueError, match=r"not a folder on this machine.*base_model=.*include_base=True"):
        PinForLocalization.from_pretrained(tmp_path / "by_path")


def test_folder_of_another_model_type_is_refused(saved):
    pin, tmp_path = saved
    pin.save_pretrained(tmp_path / "pin")
    config = json.loads((tmp_path / "pin" / "config.json").read_text())
    config["model_type"] = "blip-2"
    (tmp_path / "pin" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not hold a PIN \(its config.json has model_type='blip-2'"):
        PinForLocalization.from_pretrained(tmp_path / "pin")


def test_generation_budget_holds_the_longest_box_of_the_base_tokenizer():
    """The reference's 12 new tokens hold any box of a tokenizer with whole-number tokens (the toy OPT's, as OPT's
    own); one that splits digits (the toy LLaMA's, as LLaMA's own) needs more, and a budget that would cut every box
    is refused."""
    from transformers import AutoTokenizer

    from groundvlm.recipes.systems.pin.evaluation import check_max_new_tokens
    from groundvlm.recipes.toyworld.build import TOY_CHECKPOINTS

    def processor_of(folder):
        tok = AutoTokenizer.from_pretrained(TOY_CHECKPOINTS / folder)
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})  # as a VL-LLM's processor adds it
        return PinProcessor(image_processor=blip_image_processor(112), tokenizer=tok, image_size=112), tok

    whole, _ = processor_of("vlm-caption")
    assert whole.max_box_tokens() == 9  # " [", "105", ",", "105", ",", "112", ",", "112", "]"
    assert check_max_new_tokens(whole, None) == 12
    split, llama = processor_of("tokenizer-llama")
    longest = (
        " [" + ",".join((split.codec.ticks[-2], split.codec.ticks[-2], "112", "112")) + "]"
    )  # " [105,105,112,112]"
    assert split.max_box_tokens() == len(llama(longest, add_special_tokens=False).input_ids) == 17
    assert check_max_new_tokens(split, None) == 17
    assert check_max_new_tokens(split, 40) == 40
    with pytest.raises(ValueError, match=r"max_new_tokens=12 cannot hold a box: .* in 17 tokens"):
        check_max_new_tokens(split, 12)
