"""benchmarks/groma_speed.py: the `--tiny` CPU run produces the report's keys, interleaves the units in rotated
orders and pairs the acceptance ratios within a repeat, and its Groma paths give the reference path's greedy tokens;
the token-divergence arithmetic on hand-made scores; the 7B-shape inputs and configs have the layout the GPU run
measures (checked without building the 7B models)."""

import json
import math

import pytest
import torch

from groundvlm.modeling import GromaConfig
from tests._benchmarks import load_benchmark

# the base order of one round at batch sizes (1, 2): per batch size Groma with graphs (its default static cache),
# Groma eager vision, Groma in transformers' loop, Groma with transformers' per-token stop check, Groma with a dynamic cache, LLaVA (dynamic), LLaVA static; then the three batch-1 TTFT
# breakdowns; then the four components alone
BASE_ORDER = [
    "groma/cuda graphs/b1",
    "groma/eager/b1",
    "groma/transformers loop/b1",
    "groma/per-token stop check/b1",
    "groma/dynamic cache/b1",
    "llava/b1",
    "llava/static cache/b1",
    "groma/cuda graphs/b2",
    "groma/eager/b2",
    "groma/transformers loop/b2",
    "groma/per-token stop check/b2",
    "groma/dynamic cache/b2",
    "llava/b2",
    "llava/static cache/b2",
    "groma/cuda graphs/breakdown",
    "groma/eager/breakdown",
    "llava/breakdown",
    "groma/dinov2_alone",
    "groma/llm_prefill_alone",
    "llava/clip_alone",
    "llava/llm_prefill_alone",
]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("groma_speed")


def test_rotated_orders(bench):
    assert bench.rotated_orders(["A", "B", "C"], 4) == [
        ["A", "B", "C"],
        ["B", "C", "A"],
        ["C", "A", "B"],
        ["A", "B", "C"],
    ]


def test_tiny_run_writes_json_and_markdown(bench, tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    # two repeats: their median is their mean, so sums of medians still add up like the per-repeat values
    argv = [
        "--tiny",
        "--batch-sizes",
        "1",
        "2",
        "--new-tokens",
        "3",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--out",
        str(tmp_path),
    ]
    report = bench.main(argv)
    assert json.loads((tmp_path / "groma_speed.json").read_text()) == json.loads(json.dumps(report))
    # the partial record after the last round holds every timed value of the report (a cut-short run keeps them)
    partial = json.loads((tmp_path / "groma_speed_partial_groma_llava.json").read_text())
    assert partial["rounds_done"] == 3 and partial["samples"] == json.loads(json.dumps(report["samples"]))
    assert set(report) == {
        "meta",
        "results",
        "groma_batch1_components",
        "groma_eager_batch1_components",
        "llava_batch1_components",
        "batch1_component_ranges",
        "goals",
        "acceptance",
        "token_divergence",
        "rounds",
        "samples",
    }
    assert {"device", "torch", "transformers", "date", "git_commit", "dtype", "command"} <= set(report["meta"])
    assert report["meta"]["tiny"] and report["meta"]["command"].endswith(" ".join(argv))
    assert report["meta"]["mode"] == "interleaved" and report["meta"]["repeats"] == 2

    # one round set over both models; repeat 2 runs the base order rotated by one
    (rounds,) = report["rounds"]
    assert rounds["models"] == ["groma", "llava"] and rounds["warmup_rounds"] == 1
    assert rounds["orders"] == [BASE_ORDER, BASE_ORDER[1:] + BASE_ORDER[:1]]
    samples = report["samples"]
    assert set(samples) == set(BASE_ORDER) and all(len(v) == 2 for v in samples.values())

    results = report["results"]
    assert [(r["model"].split()[0], r.get("vision"), r["cache"], r["batch_size"]) for r in results] == [
        ("Groma", "cuda graphs", "static", 1),
        ("Groma", "cuda graphs", "static", 2),
        ("Groma", "eager", "static", 1),
        ("Groma", "eager", "static", 2),
        ("Groma", "transformers loop", "static", 1),
        ("Groma", "transformers loop", "static", 2),
        ("Groma", "per-token stop check", "static", 1),
        ("Groma", "per-token stop check", "static", 2),
        ("Groma", "dynamic cache", "dynamic", 1),
        ("Groma", "dynamic cache", "dynamic", 2),
        ("LLaVA", None, "dynamic", 1),
        ("LLaVA", None, "dynamic", 2),
        ("LLaVA", None, "static", 1),
        ("LLaVA", None, "static", 2),
    ]
    # observed, not asked: on the CPU transformers never builds its DeferredStopCheck (it needs device events); the
    # greedy loop's rows say their own stop flag, whatever transformers' hooks saw
    own = {r["stop_check_observed"] for r in results if r.get("decoding_loop") == "groma greedy"}
    assert own == {"own loop: stop flag through pinned memory"}
    assert {r["stop_check_observed"] for r in results if r.get("decoding_loop") != "groma greedy"} == {"per token"}
    rows = {
        (r["model"].split()[0], r.get("vision"), r["batch_size"]): r
        for r in results
        if r["cache"] == "dynamic" or r["model"].startswith("Groma")
    }
    keys = {
        "visual_tokens",
        "prompt_tokens",
        "ttft_ms",
        "decode_tokens_per_s",
        "decode_tokens_per_s_total",
        "peak_memory_gib",
        "regions_selected",
        "attended_prompt_tokens",
        "ttft_ms_range",
        "decode_tokens_per_s_range",
        "repeats_ttft_ms",
        "repeats_decode_tokens_per_s",
    }
    for (name, vision, batch), row in rows.items():
        assert keys <= set(row)
        unit = f"llava/b{batch}" if name == "LLaVA" else f"groma/{vision}/b{batch}"
        ttft = [s["ttft_ms"] for s in samples[unit]]
        assert row["repeats_ttft_ms"] == ttft and row["ttft_ms"] == pytest.approx((ttft[0] + ttft[1]) / 2)
        assert row["ttft_ms_range"] == [min(ttft), max(ttft)]
        decode = row["repeats_decode_tokens_per_s"]
        assert decode == [2 / (s["decode_ms"] / 1e3) for s in samples[unit]]  # 3 new tokens: 2 steps after the first
        assert row["decode_tokens_per_s"] == pytest.approx(sum(decode) / 2) and min(decode) > 0
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
        assert (
            a["regions_selected"] == b["regions_selected"]
            and a["attended_prompt_tokens"] == b["attended_prompt_tokens"]
        )

    top = {
        "dinov2_alone_ms",
        "llm_prefill_alone_ms",
        "in_ttft_vision_ms",
        "in_ttft_region_select_ms",
        "in_ttft_region_extract_ms",
        "in_ttft_llm_prefill_ms",
        "in_ttft_other_ms",
        "in_ttft_ttft_ms",
    }
    graphs, eager = report["groma_batch1_components"], report["groma_eager_batch1_components"]
    assert top <= set(graphs)
    assert top | {"in_ttft_dinov2_ms", "in_ttft_proposer_ms", "in_ttft_region_fuse_ms"} <= set(eager)
    # DINOv2 and the LLM prefill alone are one measurement shared by both variants
    dinov2 = [s["dinov2_alone_ms"] for s in samples["groma/dinov2_alone"]]
    assert graphs["dinov2_alone_ms"] == eager["dinov2_alone_ms"] == pytest.approx(sum(dinov2) / 2)
    assert report["batch1_component_ranges"]["groma_batch1_components"]["dinov2_alone_ms"] == [min(dinov2), max(dinov2)]
    # the disjoint top-level stages and `other` add up to TTFT; the vision modules fit inside `vision`
    stages = ("vision", "region_select", "region_extract", "llm_prefill", "other")
    assert sum(eager[f"in_ttft_{s}_ms"] for s in stages) == pytest.approx(eager["in_ttft_ttft_ms"])
    inner = sum(eager[f"in_ttft_{s}_ms"] for s in ("dinov2", "projector", "proposer", "region_fuse"))
    assert inner <= eager["in_ttft_vision_ms"]
    assert {"clip_alone_ms", "llm_prefill_alone_ms"} <= set(report["llava_batch1_components"])

    checks = report["acceptance"]
    assert set(checks) == {
        "groma_b1_ttft_over_dinov2_plus_llm_prefill",
        "groma_over_llava_decode_b1",
        "groma_over_llava_decode_b2",
        "groma_b1_ttft_over_dinov2_plus_llm_prefill_eager_vision",
        "groma_over_llava_decode_b1_eager_vision",
        "groma_over_llava_decode_b2_eager_vision",
    }
    # ratios are formed within each repeat from that repeat's samples, then their median decides
    prefill = [s["llm_prefill_alone_ms"] for s in samples["groma/llm_prefill_alone"]]
    ttft_ratios = [s["ttft_ms"] / (d + p) for s, d, p in zip(samples["groma/eager/b1"], dinov2, prefill)]
    # the same token count for both: Groma's tok/s over LLaVA's = LLaVA's decode time over Groma's
    decode_ratios = [
        l["decode_ms"] / g["decode_ms"] for g, l in zip(samples["groma/cuda graphs/b2"], samples["llava/b2"])
    ]
    for name, expected, limit in (
        ("groma_b1_ttft_over_dinov2_plus_llm_prefill_eager_vision", ttft_ratios, 1.5),
        ("groma_over_llava_decode_b2", decode_ratios, 0.97),
    ):
        c = checks[name]
        assert c["per_repeat"] == pytest.approx(expected) and c["paired"] and c["limit"] == limit
        assert c["ratio"] == pytest.approx(sum(expected) / 2) and c["range"] == pytest.approx(
            [min(expected), max(expected)]
        )
        assert c["pass"] == (c["ratio"] <= 1.5 if limit == 1.5 else c["ratio"] >= 0.97)
    markdown = (tmp_path / "groma_speed.md").read_text()
    line = f"- groma_over_llava_decode_b2: {checks['groma_over_llava_decode_b2']['ratio']:.3f} >= 0.97 -> "
    assert any(row.startswith(line) for row in markdown.splitlines())
    assert markdown.rstrip().splitlines()[-1].startswith("| LLaVA (tiny), static cache | 2 |")  # the table is last
    # on the CPU no roofline or compute bound: the TTFT goal and the token checks; the static cache (Groma's
    # default), the dynamic cache and the eager vision side give the same greedy tokens
    goals = report["goals"]
    same = {
        f"groma_b{b}_tokens_equal_to_{v}"
        for b in (1, 2)
        for v in ("eager", "transformers_loop", "per-token_stop_check", "dynamic_cache")
    }
    assert set(goals) == same | {"groma_b1_ttft_over_dinov2_plus_llm_prefill_goal"}
    assert all(goals[name]["pass"] for name in same)
    ttft = goals["groma_b1_ttft_over_dinov2_plus_llm_prefill_goal"]
    assert (
        ttft["limit"] == 1.2
        and ttft["at_most"]
        and ttft["value"]
        == pytest.approx(
            sorted(s["ttft_ms"] / (d + p) for s, d, p in zip(samples["groma/cuda graphs/b1"], dinov2, prefill))[0] / 2
            + sorted(s["ttft_ms"] / (d + p) for s, d, p in zip(samples["groma/cuda graphs/b1"], dinov2, prefill))[1] / 2
        )
    )

    # token divergence: in fp32 on the CPU every Groma path gives the reference path's (eager vision, dynamic
    # cache) greedy tokens on every row, and its untimed scored generate reproduces the timed runs' tokens
    div = report["token_divergence"]
    assert div["reference"] == "eager vision, dynamic cache" and div["tie_tolerance"] == 0.1
    assert (div["reference_vision_cuda_graphs"], div["reference_cache"]) == (False, "dynamic")
    entries = div["entries"]
    assert [(e["path"], e["batch_size"]) for e in entries] == [
        (path, batch)
        for batch in (1, 2)
        for path in ("cuda graphs", "eager", "transformers loop", "per-token stop check", "dynamic cache")
    ]
    for e in entries:
        assert e["unit"] == f"groma/{e['path']}/b{e['batch_size']}"
        assert e["rows"] == e["identical_rows"] == len(e["per_row"]) == e["batch_size"]
        assert e["identical_fraction"] == 1.0 and e["verdict"] == "identical"
        assert e["median_first_divergence_step"] is None and e["max_ref_margin_at_divergence"] is None
        assert e["tie_flips"] == e["real_divergences"] == e["region_count_mismatches"] == 0
        assert all(r["step"] is None and r["kind"] == "identical" and r["region_count_equal"] for r in e["per_row"])
        assert e["tokens"] == e["reference_tokens"]
        assert e["tokens_match_timed"] and e["timed_tokens"] == [samples[e["unit"]][0]["tokens"]]
    section = markdown[markdown.index("Greedy-token divergence") : markdown.index("| model | batch |")]
    assert "| cuda graphs | 2 | 2/2 | – | – | – | 0/0 | 0 | 0 |" in section
    assert section.count("| yes | identical |") == len(entries)


def test_token_divergence_on_hand_made_scores(bench):
    """First differing step, margins, ranks and kinds on scores built so that each row parts in a known way."""
    steps, rows = 4, 4
    # every step and row: token 0 on top by 0.5; token 5 masked to -inf in both paths (as min_new_tokens masks EOS)
    ref = torch.tensor([2.5, 2.0, 1.5, 1.0, 0.5, -math.inf]).repeat(steps, rows, 1)
    other = ref.clone()
    other[:, 0, 1] += 0.01  # row 0: noise only, the same argmax everywhere
    other[1, 1, 3] += 0.02  # row 1: noise at step 1, then a near-tie at step 2 that flips
    ref[2, 1, 1], other[2, 1, 1] = 2.45, 2.55
    other[1, 2, 3] = 3.0  # row 2: the other path prefers the reference's 4th token by far at step 1
    ref[0, 3, 1] = other[0, 3, 1] = 2.5  # row 3: an exact tie at step 0 (argmax takes token 0), broken the other way
    other[0, 3, 0] = 2.49
    ref_tokens, other_tokens = ref.argmax(-1).T, other.argmax(-1).T  # (rows, steps), greedy
    assert other_tokens.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 3, 0, 0], [1, 0, 0, 0]]

    out = bench.token_divergence(ref_tokens, tuple(ref), other_tokens, tuple(other))
    assert [r["step"] for r in out] == [None, 2, 1, 0]
    assert [r["kind"] for r in out] == ["identical", "tie-flip", "real", "tie-flip"]
    assert out[0] == {"step": None, "max_abs_score_diff_before": pytest.approx(0.01), "kind": "identical"}
    flip, real, tie = out[1], out[2], out[3]
    assert (flip["ref_token"], flip["other_token"], flip["other_rank_in_ref"], flip["other_is_ref_top2"]) == (
        0,
        1,
        2,
        True,
    )
    assert flip["ref_margin"] == flip["ref_gap_to_other"] == pytest.approx(0.05)
    assert flip["other_margin"] == flip["other_gap_to_ref"] == pytest.approx(0.05)
    assert flip["max_abs_score_diff_before"] == pytest.approx(0.02)
    assert flip["ref_top1"] == 2.5 and flip["ref_top1_bf16_spacing"] == 2**-6  # bf16 spacing on [2, 4)
    assert (real["ref_token"], real["other_token"], real["other_rank_in_ref"], real["other_is_ref_top2"]) == (
        0,
        3,
        4,
        False,
    )
    assert real["ref_margin"] == pytest.approx(0.5) and real["ref_gap_to_other"] == pytest.approx(1.5)
    assert real["other_margin"] == real["other_gap_to_ref"] == pytest.approx(0.5)
    assert real["max_abs_score_diff_before"] == 0.0
    assert tie["ref_margin"] == tie["ref_gap_to_other"] == 0.0 and tie["other_rank_in_ref"] == 2
    assert tie["max_abs_score_diff_before"] is None  # nothing before step 0
    # a tighter tolerance makes the 0.05 flip real; the exact tie stays a tie-flip
    tight = bench.token_divergence(ref_tokens, ref, other_tokens, other, tie_tolerance=0.01)
    assert [r["kind"] for r in tight] == ["identical", "real", "real", "tie-flip"]
    # without the other path's scores: no noise or other-side fields, the same steps and kinds
    bare = bench.token_divergence(ref_tokens, ref, other_tokens)
    assert [r["kind"] for r in bare] == [r["kind"] for r in out] and "other_margin" not in bare[1]
    assert "max_abs_score_diff_before" not in bare[0]

    summary = bench.divergence_summary(out)
    assert summary == {
        "rows": 4,
        "identical_rows": 1,
        "identical_fraction": 0.25,
        "median_first_divergence_step": 1,
        "min_first_divergence_step": 0,
        "max_ref_margin_at_divergence": pytest.approx(0.5),
        "max_ref_gap_at_divergence": pytest.approx(1.5),
        "other_is_ref_top2_rows": 2,
        "tie_flips": 2,
        "real_divergences": 1,
        "region_count_mismatches": 0,
        "max_abs_score_diff_before_divergence": pytest.approx(0.02),
        "verdict": "real divergence",
    }
    assert bench.divergence_summary([out[0], out[1], out[3]])["verdict"] == "tie-flips only"
    assert (
        bench.divergence_summary([out[0], {**out[1], "kind": "regions differ", "region_count_equal": False}])["verdict"]
        == "regions differ"
    )
    only = bench.divergence_summary(out[:1])
    assert only["verdict"] == "identical" and only["median_first_divergence_step"] is None
    for value, spacing in ((2.5, 2**-6), (20.0, 2**-3), (-0.3, 2**-9)):  # as torch's bfloat16 steps
        t = torch.tensor(value, dtype=torch.bfloat16)
        assert bench.bf16_spacing(value) == spacing == abs(float(torch.nextafter(t, t * 2) - t))
    assert bench.bf16_spacing(0.0) is None and bench.bf16_spacing(-math.inf) is None


def test_hardware_goals_arithmetic(bench):
    """Roofline, throughput, compute-bound TTFT and memory goals from result rows of a named GPU."""
    gib = 2**30
    row = dict(
        vision="cuda graphs",
        model="Groma-7B shape",
        llm_weight_bytes=13 * 10**9,
        kv_bytes_per_token=524288,
        llm_matmul_parameters=6.5 * 10**9,
        llm_layers=32,
        llm_hidden=4096,
        vision_parameters=3 * 10**8,
        vision_tokens=1025,
        peak_memory_gib=None,
    )
    results = [
        dict(row, batch_size=1, attended_prompt_tokens=[500], decode_tokens_per_s=200.0, ttft_ms=50.0),
        dict(
            row,
            batch_size=8,
            attended_prompt_tokens=[500] * 8,
            decode_tokens_per_s=160.0,
            ttft_ms=100.0,
            peak_memory_gib=17 * gib / gib,
        ),
        dict(row, batch_size=32, attended_prompt_tokens=[500] * 32, decode_tokens_per_s=90.0, ttft_ms=400.0),
    ]
    for r in results:
        r["decode_tokens_per_s_total"] = r["decode_tokens_per_s"] * r["batch_size"]
    goals = bench.hardware_goals(results, {}, "NVIDIA H100 80GB HBM3", new_tokens=64)
    roof = 3.35e12 / (13e9 + 524288 * (500 + 32))
    assert goals["groma_b1_decode_fraction_of_hbm_roofline"]["value"] == pytest.approx(200.0 / roof)
    assert goals["groma_b1_decode_fraction_of_hbm_roofline"]["pass"] == (200.0 / roof >= 0.7)
    assert goals["groma_b8_decode_tokens_per_s_total"] == {
        "value": 1280.0,
        "limit": 1200.0,
        "at_most": False,
        "pass": True,
    }
    assert not goals["groma_b32_decode_tokens_per_s_total"]["pass"]  # 2,880 < 3,000
    flops = 2 * 6.5e9 * 4000 + 4 * 32 * 4096 * 8 * 500**2 + 2 * 3e8 * 1025 * 8
    assert goals["groma_b8_ttft_over_compute_bound"]["value"] == pytest.approx(100.0 / (flops / 989e12 * 1e3))
    assert goals["groma_b8_peak_memory_gib"]["pass"]
    assert bench.hardware_goals(results, {}, "some other GPU", new_tokens=64).keys() == {
        "groma_b8_decode_tokens_per_s_total",
        "groma_b32_decode_tokens_per_s_total",
        "groma_b8_peak_memory_gib",
    }


def test_sequential_run_does_not_pair_across_models(bench, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    report = bench.main(
        [
            "--tiny",
            "--sequential",
            "--batch-sizes",
            "1",
            "--new-tokens",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--component-calls",
            "1",
        ]
    )
    assert report["meta"]["mode"] == "sequential"
    assert [r["models"] for r in report["rounds"]] == [["groma"], ["llava"]]
    checks = report["acceptance"]
    assert checks["groma_b1_ttft_over_dinov2_plus_llm_prefill"]["paired"]  # both parts of Groma's own round
    assert not checks["groma_over_llava_decode_b1"]["paired"]
    decode = checks["groma_over_llava_decode_b1"]
    groma, llava = report["samples"]["groma/cuda graphs/b1"][0], report["samples"]["llava/b1"][0]
    assert decode["per_repeat"] == pytest.approx([llava["decode_ms"] / groma["decode_ms"]]) == [decode["ratio"]]


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


def test_eval_speed_tiny_run(tmp_path, monkeypatch):
    """benchmarks/groma_eval_speed.py --tiny: one row per (cache, batch, order), answers equal across rows."""
    monkeypatch.delenv("OUT", raising=False)
    report = load_benchmark("groma_eval_speed").main(
        ["--tiny", "--examples", "3", "--batch-sizes", "2", "--caches", "dynamic", "--out", str(tmp_path)]
    )
    assert [(r["cache"], r["batch_size"], r["sorted_by_length"]) for r in report["results"]] == [
        ("dynamic", 2, True),
        ("dynamic", 2, False),
    ]
    assert all(report["answers_equal_to_first_row"].values())
    assert all(r["examples_per_s"] > 0 for r in report["results"])
    assert (tmp_path / "groma_eval_speed.md").read_text().count("| dynamic | 2 |") == 2
