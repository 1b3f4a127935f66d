"""benchmarks/groma_speed.py: the `--tiny` CPU run produces the report's keys; the 7B-shape inputs and configs have
the layout the GPU run measures (checked without building the 7B models)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from groundvlm.modeling import GromaConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "groma_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("groma_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_json_and_markdown(bench, tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    argv = ["--tiny", "--batch-sizes", "1", "2", "--new-tokens", "3", "--repeats", "1", "--warmup", "0",
            "--out", str(tmp_path)]  # fmt: skip
    report = bench.main(argv)
    assert json.loads((tmp_path / "groma_speed.json").read_text()) == json.loads(json.dumps(report))
    assert set(report) == {"meta", "results", "groma_batch1_components", "groma_eager_batch1_components",
                           "llava_batch1_components", "acceptance"}  # fmt: skip
    assert {"device", "torch", "transformers", "date", "git_commit", "dtype", "command"} <= set(report["meta"])
    assert report["meta"]["tiny"] and report["meta"]["command"].endswith(" ".join(argv))

    rows = {(r["model"].split()[0], r.get("vision"), r["batch_size"]): r for r in report["results"]}
    assert len(rows) == len(report["results"]) == 6
    assert set(rows) == {("Groma", v, b) for v in ("cuda graphs", "eager") for b in (1, 2)} | {
        ("LLaVA", None, 1), ("LLaVA", None, 2)}  # fmt: skip
    keys = {"visual_tokens", "prompt_tokens", "ttft_ms", "decode_tokens_per_s", "decode_tokens_per_s_total",
            "peak_memory_gib", "regions_selected", "attended_prompt_tokens"}  # fmt: skip
    for (name, _, batch), row in rows.items():
        assert keys <= set(row)
        assert row["ttft_ms"] > 0 and row["decode_tokens_per_s"] > 0
        assert row["decode_tokens_per_s_total"] == pytest.approx(batch * row["decode_tokens_per_s"])
        assert row["peak_memory_gib"] is None  # CPU: no CUDA allocator statistics
        assert len(row["attended_prompt_tokens"]) == batch
    # tiny Groma: 112 px -> 8x8 patches -> 16 image tokens, plus 100 region slots; tiny LLaVA: 112/14 squared = 64
    groma1 = rows[("Groma", "cuda graphs", 1)]
    assert groma1["visual_tokens"] == 16 + 100 and rows[("LLaVA", None, 1)]["visual_tokens"] == 64
    assert len(rows[("Groma", "eager", 2)]["regions_selected"]) == 2
    # attended Groma tokens: the prompt minus 2 tokens per unused region pair (no padding at batch 1)
    n = groma1["regions_selected"][0]
    assert groma1["attended_prompt_tokens"] == [groma1["prompt_tokens"] - 2 * (100 - n)]
    # the vision variant changes no result: same regions and attended tokens in both rows
    for batch in (1, 2):
        a, b = rows[("Groma", "cuda graphs", batch)], rows[("Groma", "eager", batch)]
        assert a["regions_selected"] == b["regions_selected"] and a["attended_prompt_tokens"] == b["attended_prompt_tokens"]

    top = {"dinov2_alone_ms", "llm_prefill_alone_ms", "in_ttft_vision_ms", "in_ttft_region_select_ms",
           "in_ttft_region_extract_ms", "in_ttft_llm_prefill_ms", "in_ttft_other_ms", "in_ttft_ttft_ms"}  # fmt: skip
    assert top <= set(report["groma_batch1_components"])
    eager = report["groma_eager_batch1_components"]
    assert top | {"in_ttft_dinov2_ms", "in_ttft_proposer_ms", "in_ttft_region_fuse_ms"} <= set(eager)
    # the disjoint top-level stages and `other` add up to TTFT; the vision modules fit inside `vision`
    stages = ("vision", "region_select", "region_extract", "llm_prefill", "other")
    assert sum(eager[f"in_ttft_{s}_ms"] for s in stages) == pytest.approx(eager["in_ttft_ttft_ms"])
    inner = sum(eager[f"in_ttft_{s}_ms"] for s in ("dinov2", "projector", "proposer", "region_fuse"))
    assert inner <= eager["in_ttft_vision_ms"]
    assert {"clip_alone_ms", "llm_prefill_alone_ms"} <= set(report["llava_batch1_components"])
    assert set(report["acceptance"]) == {
        "groma_b1_ttft_over_dinov2_plus_llm_prefill", "groma_over_llava_decode_b1", "groma_over_llava_decode_b2",
        "groma_b1_ttft_over_dinov2_plus_llm_prefill_eager_vision", "groma_over_llava_decode_b1_eager_vision",
        "groma_over_llava_decode_b2_eager_vision",
    }  # fmt: skip
    markdown = (tmp_path / "groma_speed.md").read_text()
    assert markdown.rstrip().splitlines()[-1].startswith("| LLaVA (tiny) | 2 |")  # the results table comes last


def test_7b_inputs_and_configs_have_the_measured_layout(bench):
    tok, base = bench.toy_tokenizer()
    config = GromaConfig()
    inputs = bench.groma_inputs(tok, base, config, 3, torch.device("cpu"))
    ids = inputs["input_ids"]
    assert inputs["pixel_values"].shape == (3, 3, 448, 448)
    assert int(ids.max()) < config.text_config.vocab_size == 32114
    for row, mask in zip(ids, inputs["attention_mask"]):
        row = row[mask.bool()].tolist()
        assert row[0] == 1 and row.count(32008) == 256 and row.count(32009) == 100  # <s>, <image>, <region>
        first = row.index(32009)
        assert row[first - 1 : first + 3] == [32014, 32009, 32015, 32009]  # <r0><region><r1><region>
    llava = bench.llava_7b_config()
    assert (llava.vision_config.image_size // llava.vision_config.patch_size) ** 2 == llava.image_seq_length == 576
    assert llava.text_config.vocab_size == 32064 and llava.text_config.num_hidden_layers == 32
    lids = bench.llava_inputs(tok, llava, 2, torch.device("cpu"), torch.float32)["input_ids"]
    assert ((lids == 32000).sum(1) == 576).all()
