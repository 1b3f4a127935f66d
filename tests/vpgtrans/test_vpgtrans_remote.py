"""A saved VPGTransModel + VPGTransProcessor load through the Auto classes where groundvlm is not importable."""

import pytest
import torch

from groundvlm.modeling import VPGTransModel
from tests._isolated import run_isolated
from tests.vpgtrans.test_vpgtrans_model import Q, _hf_blip2, _images


@pytest.mark.remote_code
def test_saved_model_and_processor_load_through_auto_classes_without_groundvlm(tmp_path):
    _, folder, proc = _hf_blip2("opt", tmp_path)
    model = VPGTransModel.from_pretrained(folder).eval()
    out_dir = tmp_path / "vpgtrans"
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    assert {"configuration_vpgtrans.py", "modeling_vpgtrans.py", "processing_vpgtrans.py"} <= {
        p.name for p in out_dir.iterdir()
    }
    assert not list(out_dir.glob("*.bin"))
    batch = proc(images=_images(2), text=["a", "a red"])
    expected = model(**batch).logits
    torch.save({"pixel_values": batch["pixel_values"]}, tmp_path / "inputs.pt")
    code = f"""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
    path = {str(out_dir)!r}
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    assert type(config).__name__ == "VPGTransConfig", type(config)
    proc = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    assert type(proc).__name__ == "VPGTransProcessor" and proc.num_query_tokens == {Q}
    pixel_values = torch.load({str(tmp_path / "inputs.pt")!r})["pixel_values"]
    import numpy as np
    batch = proc(text=["a", "a red"], images=[np.zeros((16, 16, 3), np.uint8)] * 2)
    batch["pixel_values"] = pixel_values
    outs = []
    for auto in (AutoModel, AutoModelForImageTextToText):
        model = auto.from_pretrained(path, trust_remote_code=True).eval()
        assert type(model).__name__ == "VPGTransModel", type(model)
        outs.append(model(**batch).logits)
    torch.save(outs, {str(tmp_path / "logits.pt")!r})
    """
    run_isolated(code, cwd=tmp_path)
    for logits in torch.load(tmp_path / "logits.pt"):
        torch.testing.assert_close(logits, expected)
