"""benchmarks/vpgtrans_transfer.py: the report built from run folders (Table 3 rates, the epochs behind them, stage 1
as VPGTrans's epoch 1, partial runs marked, Fig. 7 files) on hand-written curves, and the tokenizer check that
keeps a size transfer on the source's tokenizer. The training runs themselves: `--preset tiny` (minutes)."""

import json
from pathlib import Path

import pytest
from transformers import BlipImageProcessor

from groundvlm.processing import VPGTransProcessor
from tests._benchmarks import load_benchmark
from tests._vpgtrans_toys import add_image_token, opt_tokenizer, t5_tokenizer


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("vpgtrans_transfer")


def _run_dir(root: Path, name: str, epochs: list[int], cider: list[float], vqa: list[float], wall: float = 1.0):
    folder = root / name
    folder.mkdir(parents=True)
    curve = {"epoch": epochs, "step": [5 * e for e in epochs], "cider": cider, "vqa_accuracy": vqa, "bleu_4": cider}
    (folder / "metrics.json").write_text(json.dumps({"eval_curve": curve, "benchmark": {"wall_seconds": wall}}))


def test_report_from_run_folders(bench, tmp_path):
    # size: TFS cider best 0.5 first at epoch 3; VPGTrans = stage 1 (0.55) + stage 2 -> above 0.5 at epoch 1: 3/1.
    #       TFS vqa best 0.4 at epoch 2; VPGTrans reaches 0.4 but never exceeds it: "-".
    _run_dir(tmp_path, "size/tfs", [1, 2, 3, 4], [0.1, 0.3, 0.5, 0.5], [0.2, 0.4, 0.3, 0.4])
    _run_dir(tmp_path, "size/inherit", [1, 2, 3, 4], [0.2, 0.3, 0.4, 0.45], [0.1, 0.1, 0.2, 0.2])
    _run_dir(tmp_path, "size/stage1", [1], [0.55], [0.1])
    _run_dir(tmp_path, "size/stage2", [1, 2, 3], [0.6, 0.7, 0.8], [0.3, 0.4, 0.35])
    # type, cut short: TFS 2 of 4 epochs (cider best 0.2 at epoch 1, never exceeded: "-"; vqa best 0.05 at epoch 2,
    # exceeded by stage 1: 2/1), VPGTrans stage 1 only, no VPGInherit yet.
    _run_dir(tmp_path, "type/tfs", [1, 2], [0.2, 0.1], [0.0, 0.05])
    _run_dir(tmp_path, "type/stage1", [1], [0.15], [0.1])
    (tmp_path / "type" / "stage2").mkdir()  # started, no epoch evaluated yet
    (tmp_path / "size" / "inherit" / "config.yaml").write_text("source_model: src/vlm\npreset: gpu-small\n")

    assert bench.main(["--part", "report", "--preset", "cpu", "--epochs", "4", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["speedup"] == {
        "OPT-small -> OPT-base": {"cider": "3.0", "vqa_accuracy": "-"},
        "OPT-small -> T5": {"cider": "-", "vqa_accuracy": "2.0"},
    }
    assert results["epochs_behind"]["size"] == {
        "cider": {"tfs_best": 0.5, "e_tfs": 3, "e_vt": 1},
        "vqa_accuracy": {"tfs_best": 0.4, "e_tfs": 2, "e_vt": None},
    }
    assert results["curves"]["size"]["VPGTrans"] == {
        "epoch": [1, 2, 3, 4],
        "cider": [0.55, 0.6, 0.7, 0.8],
        "vqa_accuracy": [0.1, 0.3, 0.4, 0.35],
    }
    assert set(results["curves"]["size"]["TFS"]) == {"epoch", "cider", "vqa_accuracy"}
    assert "size" not in results["partial"]
    assert results["partial"]["type"] == {"epochs": {"TFS": 2, "VPGTrans": 1}, "missing": ["VPGInherit"]}
    assert results["wall_seconds"]["size/stage2"] == 1.0 and results["planned_epochs"] == 4
    assert results["runs"] == {"size": {"source": "src/vlm", "assets": "gpu-small"}}  # as the runs recorded them

    md = (tmp_path / "results.md").read_text()
    assert "| OPT-small -> OPT-base | 3.0 | - |" in md and "| OPT-small -> T5 | - | 2.0 |" in md
    assert "| OPT-small -> OPT-base | cider | 0.500 | 3 | 1 | 3.0 |" in md
    assert "| VPGTrans | cider | 0.550 | 0.600 | 0.700 | 0.800 |" in md
    assert "| VPGTrans | cider | 0.150 |  |" in md  # the partial type curve, padded to the longest one
    assert "**Partial**" in md
    for part in ("size", "type"):
        assert (tmp_path / f"fig7_{part}.png").read_bytes()[:4] == b"\x89PNG"


def test_report_across_seeds_from_run_folders(bench, tmp_path):
    # size, three seeds: TFS best 0.5 at epoch 3 each time; VPGTrans above it at epoch 1, 3 and never -> 3.0, 1.0, -.
    for seed, stage2 in ((0, [0.6, 0.7, 0.8]), (1, [0.4, 0.6, 0.8]), (2, [0.4, 0.45, 0.5])):
        _run_dir(tmp_path / f"s{seed}", "size/tfs", [1, 2, 3, 4], [0.1, 0.3, 0.5, 0.5], [0.2, 0.4, 0.3, 0.4])
        _run_dir(tmp_path / f"s{seed}", "size/stage1", [1], [0.55 if seed == 0 else 0.2], [0.1])
        _run_dir(tmp_path / f"s{seed}", "size/stage2", [1, 2, 3], stage2, [0.3, 0.4, 0.35])
    dirs = [str(tmp_path / f"s{seed}") for seed in range(3)]
    assert bench.main(["--part", "seeds", "--seed_dirs", *dirs, "--out", str(tmp_path / "agg")]) == 0
    stats = json.loads((tmp_path / "agg" / "seeds.json").read_text())["speedup"]
    assert list(stats) == ["size"]  # no type runs
    assert stats["size"]["cider"]["per_seed"] == [3.0, 1.0, None]
    assert stats["size"]["vqa_accuracy"]["never"] == 3
    md = (tmp_path / "agg" / "seeds.md").read_text()
    assert "| OPT-small -> OPT-base | 2.0 ± 1.4 (3 seeds, 1 never) | - (3 of 3 seeds never) |" in md
    with pytest.raises(SystemExit, match="at least two"):
        bench.main(["--part", "seeds", "--seed_dirs", dirs[0]])


def _source(folder: Path) -> Path:
    tok = opt_tokenizer()
    add_image_token(tok)
    VPGTransProcessor(BlipImageProcessor(size={"height": 16, "width": 16}), tok, num_query_tokens=4).save_pretrained(
        folder
    )
    return folder


def test_tokenizer_check(bench, tmp_path):
    source = _source(tmp_path / "source")
    same, other, larger = tmp_path / "same", tmp_path / "t5", tmp_path / "larger"
    opt_tokenizer().save_pretrained(same)
    t5_tokenizer().save_pretrained(other)
    opt_tokenizer(extra_words=("hexagon",)).save_pretrained(larger)
    bench.check_tokenizers("size", source, same)  # identical but for the source's <image>
    bench.check_tokenizers("type", source, other)
    with pytest.raises(SystemExit, match="needs the source's tokenizer"):
        bench.check_tokenizers("size", source, larger)
    with pytest.raises(SystemExit, match="expects another tokenizer"):
        bench.check_tokenizers("type", source, same)


def test_runs_call_the_recipe_function_with_parsed_arguments(bench, tmp_path, monkeypatch):
    from groundvlm.recipes.systems.vpgtrans import stages
    from groundvlm.recipes.systems.vpgtrans.arguments import VPGTransScriptArguments

    calls = []
    monkeypatch.setattr(stages, "run_vpgtrans", lambda *args: calls.append(args))
    bench._run("tfs", ["--stage", "tfs", "--config", "tfs"], tmp_path)
    (run_args, script_args, *_, training_args) = calls[0]
    assert isinstance(script_args, VPGTransScriptArguments) and script_args.stage == "tfs"
    assert training_args.output_dir == str(tmp_path / "tfs") and run_args.resume is False
