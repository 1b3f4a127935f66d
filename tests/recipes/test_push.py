"""Model cards (hub_cards/ + recipes/push/cards.py) and the Hub push CLI (recipes/push/push_to_hub.py), offline.

Tiny PIN / VPGTrans / Groma folders are written by the models' own `save_pretrained`; `HfApi` methods are replaced by
recorders, so no test can reach the network.
"""

import json
import math
import shutil

import pytest
import torch
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard
from transformers import Blip2Processor, BlipImageProcessor

from groundvlm.modeling import PinForLocalization, VPGTransConfig, VPGTransModel
from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from groundvlm.processing import PinProcessor, VPGTransProcessor
from groundvlm.recipes.convert.groma import AUTO_MAP as GROMA_AUTO_MAP
from groundvlm.recipes.push.cards import build_model_card, eval_results_from_metrics
from groundvlm.recipes.push.push_to_hub import NotSelfContainedError, check_self_contained, main, push_to_hub
from tests._groma_tiny import tiny_groma_config
from tests._pin_tiny import blip_image_processor, make_tokenizer, tiny_blip2
from tests._vpgtrans_toys import add_image_token, blip2_config, opt_text_config, opt_tokenizer

PIN_BASE_ID = "org/tiny-blip2"

# A PIN run's metrics.json (recipes/pin.py layout): the "pin" section is the model, "raw" a baseline.
PIN_METRICS = {
    "pin": {
        "held_out": {
            "miou": 0.41234567,
            "miou_s": math.nan,
            "miou_m": 0.3,
            "miou_l": 0.5,
            "parse_ok": 0.98,
            "count": 100,
        },
        "val": {"miou": 0.45},
        "train_seconds": 12.5,
        "trainable_parameters": 1217280,
    },
    "raw": {"held_out": {"miou": 0.05}, "val": {"miou": 0.06}},
}


# --------------------------------------------------------------------------------------------- tiny folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved folders: PIN adapter-style (+ processor), PIN with its base inside, VPGTrans (+ processor), Groma."""
    root = tmp_path_factory.mktemp("push")
    torch.manual_seed(0)
    tok = make_tokenizer("opt")
    pin = PinForLocalization.from_base(tiny_blip2(tok), base_model_name_or_path=PIN_BASE_ID)
    pin.save_pretrained(root / "pin")
    PinProcessor.from_base_processor(
        Blip2Processor(image_processor=blip_image_processor(), tokenizer=tok, num_query_tokens=4)
    ).save_pretrained(root / "pin")
    pin_full = PinForLocalization.from_base(tiny_blip2(tok, cls=VPGTransModel, config_cls=VPGTransConfig))
    pin_full.save_pretrained(root / "pin_full", include_base=True)

    vtok = opt_tokenizer()
    image_id = add_image_token(vtok)
    vpg = VPGTransModel(blip2_config(opt_text_config(len(vtok)), image_id, config_cls=VPGTransConfig))
    vpg.save_pretrained(root / "vpgtrans")
    VPGTransProcessor(BlipImageProcessor(size={"height": 16, "width": 16}), vtok, num_query_tokens=4).save_pretrained(
        root / "vpgtrans"
    )

    # As the converter / a remote-code load leaves it: auto_map set, classes registered so the code is copied.
    groma = GromaForConditionalGeneration(tiny_groma_config())
    groma.config.auto_map = dict(GROMA_AUTO_MAP)
    type(groma.config).register_for_auto_class()
    GromaForConditionalGeneration.register_for_auto_class("AutoModel")
    groma.save_pretrained(root / "groma")
    return {"pin": root / "pin", "pin_full": root / "pin_full", "vpgtrans": root / "vpgtrans", "groma": root / "groma"}


def _copy(folders, name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(folders[name], dst)
    return dst


@pytest.fixture
def hub_calls(monkeypatch):
    """Replace the HfApi methods the push uses by recorders; returns the list of (method, kwargs) calls."""
    calls = []

    def recorder(name):
        def record(self, *args, **kwargs):
            calls.append((name, args, kwargs))
            return f"recorded {name}"

        return record

    for name in ("create_repo", "upload_folder", "upload_file", "create_commit"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    return calls


def _yaml_header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# --------------------------------------------------------------------------------------------------- cards


def test_pin_card_metadata_eval_results_and_round_trip(folders, tmp_path):
    card = build_model_card("pin", folders["pin"], PIN_METRICS, datasets="groundvlm-toyworld", model_id="me/pin-x")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-text-to-text"
    assert {"custom_code", "pin"} <= set(data.tags)
    assert data.base_model == PIN_BASE_ID  # taken from the adapter's base reference
    assert data.datasets == ["groundvlm-toyworld"]
    # Only the "pin" section; the NaN bucket, counts, timings and the "raw" baseline are not results.
    got = sorted((r.dataset_split, r.metric_type, r.metric_value) for r in data.eval_results)
    assert got == [
        ("held_out", "miou", 0.412346),
        ("held_out", "miou_l", 0.5),
        ("held_out", "miou_m", 0.3),
        ("held_out", "parse_ok", 0.98),
        ("val", "miou", 0.45),
    ]
    assert {r.task_type for r in data.eval_results} == {"object-detection"}
    assert {r.dataset_name for r in data.eval_results} == {"groundvlm-toyworld"}

    path = tmp_path / "README.md"
    card.save(path)
    text = path.read_text(encoding="utf-8")
    header = _yaml_header(text)
    (entry,) = header["model-index"]
    assert entry["name"] == "me/pin-x"
    held_out = next(r for r in entry["results"] if r["dataset"]["split"] == "held_out")
    assert held_out["task"] == {"type": "object-detection", "name": "Object localisation"}
    assert {m["type"]: m["value"] for m in held_out["metrics"]} == {
        "miou": 0.412346,
        "miou_m": 0.3,
        "miou_l": 0.5,
        "parse_ok": 0.98,
    }
    loaded = ModelCard.load(path)
    assert sorted(loaded.data.eval_results, key=lambda r: (r.dataset_split, r.metric_type)) == sorted(
        data.eval_results, key=lambda r: (r.dataset_split, r.metric_type)
    )
    assert loaded.data.tags == data.tags and loaded.data.base_model == PIN_BASE_ID

    body = loaded.text
    assert 'AutoModel.from_pretrained("me/pin-x", trust_remote_code=True)' in body
    assert 'AutoProcessor.from_pretrained("me/pin-x", trust_remote_code=True)' in body
    assert "post_process_localization" in body
    assert "| Object localisation | groundvlm-toyworld | held_out | mIoU | 0.4123 |" in body
    assert "0.05" not in body  # the baseline's number
    assert "Fallback box" in body and "[0,0,0,0]" in body
    assert "loaded from `org/tiny-blip2`" in body
    assert "Dorkenwald" in body and "@inproceedings" in body


def test_pin_card_says_whether_pin_beat_the_constant_box(folders):
    sentence = "PIN (ours) TIED the best constant baseline (full-image box, 0.302 vs 0.300): no localisation gain"
    card = build_model_card("pin", folders["pin"], {**PIN_METRICS, "comparison": {"verdict": sentence}})
    assert f"**Against the best constant box** (the run that made this checkpoint): {sentence}" in card.text
    assert "Against the best constant box" not in build_model_card("pin", folders["pin"], PIN_METRICS).text


def test_pin_card_with_base_inside_and_no_results(folders):
    card = build_model_card("pin", folders["pin_full"])
    assert card.data.eval_results is None and card.data.base_model is None
    assert "stored in this repository under `base/`" in card.text
    assert "No evaluation results were supplied" in card.text
    assert "model-index" not in str(card)


def test_vpgtrans_card_from_metrics_json_path(folders, tmp_path):
    metrics = {
        "train": {"train_loss": 1.25},
        "eval": {"cider": 0.91234, "bleu_4": 0.2, "vqa_accuracy": 0.5, "sample_caption": "a red star"},
        "eval_curve": {"epoch": [1, 2], "cider": [0.1, 0.2]},
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    card = build_model_card(
        "vpgtrans",
        folders["vpgtrans"],
        path,
        base_model=["org/opt-a", "org/opt-b"],
        model_id="me/vpg",
        eval_dataset="coco_karpathy",
    )
    assert card.data.base_model == ["org/opt-a", "org/opt-b"]
    assert {"custom_code", "vpgtrans"} <= set(card.data.tags)
    got = sorted((r.task_type, r.metric_type, r.metric_value, r.dataset_name) for r in card.data.eval_results)
    assert got == [
        ("image-to-text", "bleu_4", 0.2, "coco_karpathy"),
        ("image-to-text", "cider", 0.91234, "coco_karpathy"),
        ("visual-question-answering", "vqa_accuracy", 0.5, "coco_karpathy"),
    ]
    assert all(r.dataset_split is None for r in card.data.eval_results)
    assert 'AutoModelForImageTextToText.from_pretrained("me/vpg", trust_remote_code=True)' in card.text
    assert "| Image captioning | coco_karpathy | – | CIDEr | 0.9123 |" in card.text
    assert "Zhang" in card.text and "NeurIPS" in card.text


def test_sections_may_name_their_dataset():
    metrics = {"eval": {"dataset_name": "VQAv2", "dataset_type": "HuggingFaceM4/VQAv2", "vqa_accuracy": 0.61}}
    (result,) = eval_results_from_metrics("vpgtrans", metrics)
    assert (result.dataset_name, result.dataset_type, result.metric_value) == ("VQAv2", "HuggingFaceM4/VQAv2", 0.61)


def test_groma_card_states_the_region_box_quirk(folders, tmp_path):
    flat = {"accuracy": 0.8, "ar": 0.55, "count": 10}  # a flat metric dict is one section
    card = build_model_card("groma", folders["groma"], flat, model_id="me/groma")
    got = sorted((r.task_name, r.metric_type, r.metric_value) for r in card.data.eval_results)
    assert got == [
        ("Class-agnostic region proposal", "ar", 0.55),
        ("Referring expression comprehension", "accuracy", 0.8),
    ]
    assert {"custom_code", "groma"} <= set(card.data.tags)
    assert "config.region_box_quirk=True" in card.text and "as if they were corners" in card.text
    assert "post_process_grounding" in card.text and "Ma, Chuofan" in card.text

    fixed = _copy(folders, "groma", tmp_path)
    config = json.loads((fixed / "config.json").read_text())
    config["region_box_quirk"] = False
    (fixed / "config.json").write_text(json.dumps(config))
    text = build_model_card("groma", fixed).text
    assert "config.region_box_quirk=False" in text and "config.region_box_quirk=True" not in text


def test_card_errors_name_the_problem(folders, tmp_path):
    with pytest.raises(ValueError, match="Unknown system 'blip'"):
        build_model_card("blip", folders["pin"])
    with pytest.raises(ValueError, match="model_type='pin', not 'groma'"):
        build_model_card("groma", folders["pin"])
    with pytest.raises(FileNotFoundError, match="nothing.json does not exist"):
        build_model_card("pin", folders["pin"], tmp_path / "nothing.json")
    with pytest.raises(ValueError, match=r"no section\(s\) \['eval'\]"):
        build_model_card("pin", folders["pin"], PIN_METRICS, eval_sections=["eval"])
    with pytest.raises(TypeError, match="eval_results must be a dict"):
        build_model_card("pin", folders["pin"], [EvalResult("a", "b", "c", "d", 1.0)])
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_model_card("pin", tmp_path)


# ------------------------------------------------------------------------------------------ self-containment


@pytest.mark.parametrize("name", ["pin", "pin_full", "vpgtrans", "groma"])
def test_saved_folders_are_self_contained(folders, name):
    check_self_contained(folders[name])


def _problems(folder) -> str:
    with pytest.raises(NotSelfContainedError) as info:
        check_self_contained(folder)
    return str(info.value)


def test_pickle_files_are_rejected(folders, tmp_path):
    folder = _copy(folders, "vpgtrans", tmp_path)
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    message = _problems(folder)
    assert "training_args.bin is a pickle file" in message and "pytorch_model.bin is a pickle file" in message
    assert "no *.safetensors weights" in message


def test_missing_code_files_are_named(folders, tmp_path):
    folder = _copy(folders, "groma", tmp_path)
    (folder / "modeling_groma.py").unlink()
    message = _problems(folder)
    assert "'AutoModel'] = 'modeling_groma.GromaForConditionalGeneration' names modeling_groma.py" in message

    folder = _copy(folders, "groma", tmp_path / "b")
    (folder / "groma_proposer.py").unlink()
    assert "imports `.groma_proposer` but groma_proposer.py is not in the folder" in _problems(folder)

    folder = _copy(folders, "pin", tmp_path / "c")  # the processor's auto_map (processor_config.json)
    (folder / "processing_pin.py").unlink()
    assert "processor_config.json auto_map['AutoProcessor'] = 'processing_pin.PinProcessor'" in _problems(folder)


def test_auto_map_must_exist_and_name_defined_classes(folders, tmp_path):
    folder = _copy(folders, "vpgtrans", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    assert "config.json has no auto_map" in _problems(folder)

    config["auto_map"] = {"AutoConfig": "configuration_vpgtrans.VPGTransConfig", "AutoModel": "modeling_vpgtrans.Nope"}
    (folder / "config.json").write_text(json.dumps(config))
    assert "modeling_vpgtrans.py defines no `Nope`" in _problems(folder)


def test_modeling_file_imports_are_checked(folders, tmp_path):
    folder = _copy(folders, "pin", tmp_path)
    code = folder / "pin_insert.py"
    original = code.read_text()
    code.write_text(original + "\nfrom groundvlm.modeling.pin_insert import PinInsert as _P\n")
    message = _problems(folder)
    assert "pin_insert.py line" in message and "imports `groundvlm.modeling.pin_insert`" in message

    # Optional packages are fine inside try/except (transformers' import check skips them), not at top level.
    code.write_text(original + "\ntry:\n    import scipy\nexcept ImportError:\n    scipy = None\n")
    check_self_contained(folder)
    code.write_text(original + "\nimport scipy\n")
    assert "imports `scipy`, which users loading with trust_remote_code may not have" in _problems(folder)
    code.write_text(original + "\nfrom .helpers.boxes import iou\n")
    assert "remote code must be flat sibling files" in _problems(folder)


def test_pin_with_a_local_base_path_is_rejected(folders, tmp_path):
    folder = _copy(folders, "pin", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "blip2")
    (folder / "config.json").write_text(json.dumps(config))
    assert "references its base at the local path" in _problems(folder)


# ---------------------------------------------------------------------------------------------------- push


def test_push_creates_repo_and_uploads_folder_with_card(folders, tmp_path, hub_calls):
    folder = _copy(folders, "pin", tmp_path)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(PIN_METRICS))
    push_to_hub(folder, "me/pin-x", private=True, eval_results=metrics)
    assert [c[0] for c in hub_calls] == ["create_repo", "upload_folder"]
    create, upload = hub_calls[0][2], hub_calls[1][2]
    assert create == {"repo_id": "me/pin-x", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "me/pin-x" and upload["folder_path"] == str(folder)
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "me/pin-x" and "custom_code" in card.data.tags
    assert {r.metric_type for r in card.data.eval_results} == {"miou", "miou_m", "miou_l", "parse_ok"}


def test_dry_run_cli_makes_no_hub_call(folders, tmp_path, hub_calls, capsys):
    folder = _copy(folders, "groma", tmp_path)
    main(["--model_dir", str(folder), "--repo_id", "me/groma", "--dry_run", "--private"])
    assert hub_calls == []
    out = capsys.readouterr().out
    assert "would create model repo me/groma (private=True" in out
    for name in ("README.md", "config.json", "model.safetensors", "modeling_groma.py", "groma_proposer.py"):
        assert f"  {name}  (" in out
    assert ModelCard.load(folder / "README.md").data.model_name == "me/groma"


def test_cli_refuses_bad_folders_and_repo_ids_before_any_hub_call(folders, tmp_path, hub_calls, capsys):
    folder = _copy(folders, "vpgtrans", tmp_path)
    (folder / "optimizer.pt").write_bytes(b"x")
    with pytest.raises(SystemExit) as info:
        main(["--model_dir", str(folder), "--repo_id", "me/vpg"])
    assert info.value.code == 2
    assert "optimizer.pt is a pickle file" in capsys.readouterr().err
    assert not (folder / "README.md").exists()
    with pytest.raises(ValueError, match="repo_id must look like 'org/name'"):
        push_to_hub(folders["vpgtrans"], "no-org")
    assert hub_calls == []
