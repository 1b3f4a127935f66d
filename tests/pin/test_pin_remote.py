"""A saved PIN loads through AutoModel/AutoProcessor (trust_remote_code) where groundvlm is not importable."""

import json

import pytest
import torch
from PIL import Image
from transformers import Blip2Processor

from groundvlm.modeling import PinForLocalization, VPGTransConfig, VPGTransModel
from groundvlm.processing import PinProcessor
from tests._isolated import run_isolated
from tests._pin_tiny import blip_image_processor, make_tokenizer, tiny_blip2

_OBJECTS = ["cat", "apple"]
_SIZES = [(200, 300), (160, 120)]  # (height, width) of the original images
_GENERATE = dict(max_new_tokens=8, do_sample=False, num_beams=1)


def _images():
    return [Image.new("RGB", (w, h), (40 * i, 200 - 40 * i, 90)) for i, (h, w) in enumerate(_SIZES)]


def _localise(model, processor):
    """logits, generated ids and parsed results for the fixed images, as plain data."""
    inputs = processor(images=_images(), objects=_OBJECTS)
    with torch.no_grad():
        logits = model(**inputs).logits
    ids = model.generate(**inputs, **_GENERATE)
    results = processor.post_process_localization(ids, target_sizes=_SIZES, labels=_OBJECTS)
    return logits, ids, [{**r, "boxes": r["boxes"].tolist()} for r in results]


@pytest.mark.remote_code
def test_saved_pin_loads_and_localises_the_same_in_a_fresh_process(tmp_path):
    tokenizer = make_tokenizer("opt")
    processor = PinProcessor.from_base_processor(
        Blip2Processor(image_processor=blip_image_processor(), tokenizer=tokenizer, num_query_tokens=4)
    )
    # Adapter-style over a BLIP-2 base saved elsewhere; self-contained (include_base) over a VPGTrans base.
    blip2 = tiny_blip2(tokenizer)
    blip2.save_pretrained(tmp_path / "blip2")
    pin_blip2 = PinForLocalization.from_base(blip2, base_model_name_or_path=str(tmp_path / "blip2"))
    pin_vpg = PinForLocalization.from_base(tiny_blip2(tokenizer, cls=VPGTransModel, config_cls=VPGTransConfig))
    expected = {}
    for name, model in (("adapter", pin_blip2), ("full", pin_vpg)):
        model.save_pretrained(tmp_path / name, include_base=name == "full")
        processor.save_pretrained(tmp_path / name)
        logits, ids, results = _localise(model, processor)
        expected[name] = (logits, ids, results)

    out = run_isolated(
        f"""
        import json, torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        sizes, objects = {_SIZES!r}, {_OBJECTS!r}
        images = [Image.new("RGB", (w, h), (40 * i, 200 - 40 * i, 90)) for i, (h, w) in enumerate(sizes)]
        report = {{}}
        for name in ("adapter", "full"):
            model = AutoModel.from_pretrained(name, trust_remote_code=True)
            processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
            assert type(model).__name__ == "PinForLocalization" and type(processor).__name__ == "PinProcessor"
            inputs = processor(images=images, objects=objects)
            with torch.no_grad():
                logits = model(**inputs).logits
            ids = model.generate(**inputs, **{_GENERATE!r})
            results = processor.post_process_localization(ids, target_sizes=sizes, labels=objects)
            torch.save({{"logits": logits, "ids": ids}}, name + "_loaded.pt")
            report[name] = {{
                "base": type(model.vlm).__name__,
                "results": [{{**r, "boxes": r["boxes"].tolist()}} for r in results],
                "parsed_text": processor.post_process_localization(
                    ["In the image is a cat located at [28,42,140,210]"], target_sizes=[(448, 112)]
                )[0]["boxes"].tolist(),
            }}
        print(json.dumps(report))
        """,
        cwd=tmp_path,
    )
    report = json.loads(out.strip().splitlines()[-1])
    assert report["adapter"]["base"] == "Blip2ForConditionalGeneration"
    assert report["full"]["base"] == "VPGTransModel"
    for name in ("adapter", "full"):
        logits, ids, results = expected[name]
        loaded = torch.load(tmp_path / f"{name}_loaded.pt")
        assert torch.equal(loaded["logits"], logits)
        assert torch.equal(loaded["ids"], ids)
        assert report[name]["results"] == results
        assert report[name]["parsed_text"] == [[14.0, 84.0, 70.0, 420.0]]  # x/2, y*2 of the 224 px box
