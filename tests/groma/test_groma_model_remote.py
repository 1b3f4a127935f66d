"""A saved Groma folder loads through AutoModel / AutoModelForImageTextToText with trust_remote_code, groundvlm absent."""

import pytest
import torch

from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from groundvlm.recipes.convert.groma import AUTO_MAP, REMOTE_CODE_FILES
from tests._groma_tiny import tiny_groma_config
from tests._isolated import run_isolated
from tests.groma.test_groma_model import static_prompt


@pytest.mark.remote_code
def test_remote_code_load_in_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(tiny_groma_config()).eval()
    # save_pretrained (on-disk key names of this transformers version, which every 5.x maps on load)
    model.config.auto_map = dict(AUTO_MAP)
    type(model.config).register_for_auto_class()
    type(model).register_for_auto_class("AutoModel")
    model.save_pretrained(tmp_path / "groma")
    ids = torch.tensor([static_prompt(model.config)])
    px = torch.randn(1, 3, 112, 112)
    torch.save({"ids": ids, "px": px}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=px).logits
        boxes = model.get_region_boxes(px)[0]
    torch.save({"logits": expected, "boxes": boxes}, tmp_path / "expected.pt")
    for name in REMOTE_CODE_FILES:
        assert (tmp_path / "groma" / name).exists()
    out = run_isolated(
        """
        import torch
        from transformers import AutoModel, AutoModelForImageTextToText
        inputs, expected = torch.load("inputs.pt"), torch.load("expected.pt")
        for auto in (AutoModel, AutoModelForImageTextToText):
            model = auto.from_pretrained("groma", trust_remote_code=True).eval()
            assert type(model).__name__ == "GromaForConditionalGeneration", type(model)
            with torch.no_grad():
                logits = model(input_ids=inputs["ids"], pixel_values=inputs["px"]).logits
                gen = model.generate(input_ids=inputs["ids"], pixel_values=inputs["px"], max_new_tokens=2,
                                     do_sample=False, return_dict_in_generate=True)
            torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(gen.region_boxes[0], expected["boxes"])
        print("OK", model.__class__.__module__)
        """,
        cwd=tmp_path,
    )
    assert "OK transformers_modules" in out


def test_save_pretrained_writes_auto_map_and_code_without_help(tmp_path):
    import json

    torch.manual_seed(0)
    GromaForConditionalGeneration(tiny_groma_config()).save_pretrained(tmp_path / "groma")
    assert json.loads((tmp_path / "groma" / "config.json").read_text())["auto_map"] == AUTO_MAP
    for name in REMOTE_CODE_FILES:
        assert (tmp_path / "groma" / name).exists(), name
