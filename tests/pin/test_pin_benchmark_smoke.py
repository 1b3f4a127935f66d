"""benchmarks/pin_speed.py: a CPU run on the committed toy caption VL-LLM produces the report's keys, interleaves the
units in rotated orders and forms every ratio within a repeat from the stored samples; the paper-scale shape has
PIN's reference size (checked on the meta device, nothing is allocated). No timing assertions."""

import json

import pytest
import torch

from groundvlm.modeling import PinForLocalization
from groundvlm.recipes.systems.pin.baselines import PeftBaseline
from tests._benchmarks import load_benchmark

BASE_ORDER = [
    "infer/base/b1",
    "infer/pin/b1",
    "infer/base/b2",
    "infer/pin/b2",
    "train/pin_cached",
    "train/pin_uncached",
    "train/lora_phi",
]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("pin_speed")


def psi_parameters(n: int, d: int, s: int = 64, hidden=(512, 768)) -> int:
    """ψ = Linear(s, 512) SiLU LayerNorm Linear(512, 768) SiLU LayerNorm Linear(768, D); S is a buffer."""
    widths = [s, *hidden, d]
    linear = sum(a * b + b for a, b in zip(widths, widths[1:]))
    return linear + sum(2 * h for h in hidden)


def test_toy_run_report(bench, tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    argv = [
        "--device",
        "cpu",
        "--batch-sizes",
        "1",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--new-tokens",
        "2",
        "--calls",
        "1",
        "--train-batch-size",
        "2",
        "--train-steps",
        "2",
        "--out",
        str(tmp_path),
    ]
    report = bench.main(argv)
    assert json.loads((tmp_path / "pin_speed.json").read_text()) == json.loads(json.dumps(report))
    assert set(report) == {
        "meta",
        "models",
        "inference",
        "training",
        "acceptance",
        "training_ratios",
        "rounds",
        "samples",
    }
    meta, models = report["meta"], report["models"]
    assert {"device", "torch", "transformers", "date", "git_commit", "command"} <= set(meta)
    assert meta["command"].endswith(" ".join(argv)) and meta["base"].endswith("recipes/toy_checkpoints/vlm-caption")
    # the toy captioner: 112 px ViT with 7 px patches -> 16 x 16 patches + CLS, width 128, 4 layers (qkv 128 -> 384)
    assert (models["base_class"], models["vision_tokens"], models["vision_hidden_size"]) == ("VPGTransModel", 257, 128)
    assert models["pin_parameters"] == psi_parameters(257, 128) == 528_256
    assert models["trainable_parameters"]["lora_phi"] == 4 * 16 * ((128 + 384) + (128 + 128))

    rounds, samples = report["rounds"], report["samples"]
    assert rounds["warmup_rounds"] == 1 and rounds["orders"] == [BASE_ORDER, BASE_ORDER[1:] + BASE_ORDER[:1]]
    assert set(samples) == set(BASE_ORDER) and all(len(v) == 2 for v in samples.values())

    checks = report["acceptance"]
    assert set(checks) == {"pin_over_base_latency_b1", "pin_over_base_latency_b2"}
    for batch, row in zip((1, 2), report["inference"]):
        base, pin = samples[f"infer/base/b{batch}"], samples[f"infer/pin/b{batch}"]
        expected = [p["ms"] / b["ms"] for p, b in zip(pin, base)]
        c = checks[f"pin_over_base_latency_b{batch}"]
        assert c["per_repeat"] == pytest.approx(expected) and c["paired"] and c["limit"] == 1.01
        assert c["ratio"] == pytest.approx(sum(expected) / 2) and c["pass"] == (c["ratio"] <= 1.01)
        assert c["range"] == pytest.approx([min(expected), max(expected)]) and row["pin_over_base"] == c["ratio"]
        assert row["batch_size"] == batch and row["repeats_base_ms"] == [s["ms"] for s in base]
        assert row["base_ms"] == pytest.approx(sum(s["ms"] for s in base) / 2)

    training = {row["method"]: row for row in report["training"]}
    assert list(training) == ["pin_cached", "pin_uncached", "lora_phi"]
    for name, row in training.items():
        runs = samples[f"train/{name}"]
        # samples/s = steps x batch / seconds of that unit's timed steps
        assert row["repeats_samples_per_s"] == pytest.approx([2 * 2 / s["seconds"] for s in runs])
        assert row["samples_per_s"] == pytest.approx(sum(row["repeats_samples_per_s"]) / 2)
        assert row["step_memory_gib"] is None and all(torch.isfinite(torch.tensor(s["loss"])) for s in runs)
    rate = {name: row["repeats_samples_per_s"] for name, row in training.items()}
    ratios = report["training_ratios"]
    for key, a, b in (
        ("pin_cached_over_lora_phi", "pin_cached", "lora_phi"),
        ("pin_uncached_over_lora_phi", "pin_uncached", "lora_phi"),
        ("pin_cached_over_pin_uncached", "pin_cached", "pin_uncached"),
    ):
        expected = [x / y for x, y in zip(rate[a], rate[b])]
        assert ratios[key]["per_repeat"] == pytest.approx(expected)
        assert ratios[key]["ratio"] == pytest.approx(sum(expected) / 2)

    markdown = (tmp_path / "pin_speed.md").read_text().rstrip().splitlines()
    c = checks["pin_over_base_latency_b2"]
    assert any(line.startswith(f"- pin_over_base_latency_b2: {c['ratio']:.3f} <= 1.01 -> ") for line in markdown)
    assert markdown[-1].startswith("| LoRA-φ (r=16, α=16), from pixels | 2 | 49,152 |")  # the training table is last


def test_paper_scale_shape(bench):
    processor = bench.shape_processor()
    config = bench.blip2_opt_2_7b_shape_config(processor.image_token_id)
    with torch.device("meta"):
        base = bench.Blip2ForConditionalGeneration(config)
    pin = PinForLocalization.from_base(base, grid_size=16, image_size=224)
    assert (pin.config.num_positions, pin.config.vision_hidden_size) == (257, 1408)
    assert sum(p.numel() for p in pin.pin.parameters()) == psi_parameters(257, 1408) == 1_512_576
    text = base.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.ffn_dim, text.vocab_size) == (2560, 32, 10240, 50272)
    lora = PeftBaseline(PinForLocalization.from_base(base), "lora_phi")
    # 39 ViT-g layers: qkv 1408 -> 4224 and projection 1408 -> 1408, rank 16
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == 39 * 16 * ((1408 + 4224) + (1408 + 1408))
    inputs = bench.pin_inputs(processor, 3, "cpu", torch.float32, targets=True)
    assert inputs["pixel_values"].shape == (3, 3, 224, 224)
    assert ((inputs["input_ids"] == processor.image_token_id).sum(1) == 32).all()
    assert int(inputs["input_ids"].max()) < text.vocab_size


def test_shape_needs_cuda(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--base", "blip2-opt-2.7b-shape", "--device", "cpu"])


def test_pin_base_gpu_assets_step_packs_the_toy_cache(tmp_path):
    """benchmarks/pin_base_gpu.sh's first call, on the seconds-sized test preset: the four toy assets the
    located-caption base needs, packed so that the second call can unpack them into its cache."""
    import os
    import subprocess
    import tarfile
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "pin_base_gpu.sh"
    env = {**os.environ, "PRESET": "test", "GROUNDVLM_CACHE": str(tmp_path / "cache")}
    subprocess.run(["bash", str(script), "assets", str(tmp_path / "out")], check=True, env=env, capture_output=True)
    with tarfile.open(tmp_path / "out" / "toy_cache.tgz") as tar:
        built = {Path(n).parent.name for n in tar.getnames() if n.endswith("build_info.json")}
    assert built == {"data", "tokenizer-opt", "lm-opt-small", "vision-blip2-pos"}
    bad = subprocess.run(["bash", str(script), "train", str(tmp_path / "x")], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "assets or caption" in bad.stderr
