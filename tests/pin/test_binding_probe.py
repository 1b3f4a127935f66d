"""benchmarks/binding_probe.py: the probe rows name one object each, the attention probe can read a bound attribute
where one is there, and a run on the committed base writes every number it reports."""

import json

import pytest
import torch

from tests._benchmarks import load_benchmark

probe = load_benchmark("binding_probe")


def test_colour_rows_name_exactly_one_object_of_a_multi_object_scene():
    rows = probe.colour_rows(seed=4, n_scenes=40)
    assert rows
    from groundvlm.recipes.toyworld import ToyWorld

    world = ToyWorld(seed=4, split="all")
    for row in rows:
        objs = world.scene(row["scene"]).objects
        assert len(objs) >= 2
        assert [o.colour for o in objs if o.shape == row["shape"]] == [row["colour"]]
        assert row["options"] == len({o.colour for o in objs})


def test_attention_probe_reads_a_bound_attribute_and_not_a_bag():
    """Synthetic features: each scene is 2 tokens, one per object, holding (shape one-hot, colour one-hot). Bound
    tokens let the probe name the colour of the asked shape; the same attributes averaged over the tokens (a bag)
    leave it near the scene's chance."""
    shapes, colours = ["a", "b", "c", "d"], ["r", "g", "b2", "y"]

    def scenes(n, seed):
        out, rows = {}, []
        gen = torch.Generator().manual_seed(seed)
        for i in range(n):
            s = torch.randperm(4, generator=gen)[:2]
            c = torch.randperm(4, generator=gen)[:2]
            tokens = torch.zeros(2, 8)
            tokens[0, s[0]] = tokens[1, s[1]] = 1
            tokens[0, 4 + c[0]] = tokens[1, 4 + c[1]] = 1
            bag = tokens.mean(0, keepdim=True).expand(2, 8)
            out[i] = (tokens, bag)
            k = int(torch.randint(2, (1,), generator=gen))
            rows.append({"scene": i, "shape": shapes[s[k]], "colour": colours[c[k]], "options": 2})
        return out, rows

    feats_train, train = scenes(400, 1)
    feats_test, test = scenes(200, 2)
    bound = probe.probe_stage(train, test, feats_train, feats_test, 0, shapes, colours, steps=300, seed=0)
    bag = probe.probe_stage(train, test, feats_train, feats_test, 1, shapes, colours, steps=300, seed=0)
    assert bound["accuracy"] > 0.95, bound
    assert bag["accuracy"] < 0.7, bag


@pytest.mark.timeout(120)
def test_run_on_the_committed_base_reports_each_stage(tmp_path):
    out = tmp_path / "probe.json"
    assert (
        probe.main(
            [
                "--train-scenes",
                "30",
                "--test-scenes",
                "20",
                "--steps",
                "3",
                "--answer-scenes",
                "8",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["probes"]) == set(probe.STAGES)
    assert 0 < result["probe_scene_chance"] <= 1
    for stage in result["probes"].values():
        assert 0 <= stage["accuracy"] <= 1
    assert result["answers"] and all(0 <= v["accuracy"] <= 1 for v in result["answers"].values())


def test_bind_qformer_trains_the_qformer_only():
    """The binding step moves the Q-Former and its query tokens; the ViT, projector and LLM stay as they were."""
    model = probe.VPGTransModel.from_pretrained("recipes/toy_checkpoints/vlm-caption").eval()
    processor = probe.VPGTransProcessor.from_pretrained("recipes/toy_checkpoints/vlm-caption")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curve = probe.bind_qformer(model, processor, steps=3, scenes=30)
    assert curve and curve[-1]["step"] == 3
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and "query_tokens" in changed
    assert all(k.startswith(("qformer.", "query_tokens")) for k in changed), sorted(changed)[:5]


def test_save_needs_the_binding_step():
    with pytest.raises(SystemExit):
        probe.main(["--save", "/nonexistent"])


def test_text_lookup_asks_the_binding_question_of_the_caption_and_trains_the_llm_on_the_answer():
    rows = probe.text_lookup_rows(seed=4, n_scenes=30)
    assert rows
    for row in rows:
        caption, question = row["prompt"].split(" Question: ")
        assert question.endswith(" Answer:") and row["answer"].startswith(" ")
        words = caption.replace(",", " ").replace(".", " ").split()
        assert row["answer"].strip() in words  # the answer can be read off the caption in context
        assert row["options"] >= 1
    base = probe.VPGTransModel.from_pretrained("recipes/toy_checkpoints/vlm-caption")
    processor = probe.VPGTransProcessor.from_pretrained("recipes/toy_checkpoints/vlm-caption")
    before = {k: v.clone() for k, v in base.language_model.state_dict().items()}
    result = probe.text_lookup(base, processor, steps=2, every=1, scenes=(20, 10))
    assert [c["step"] for c in result["curve"]] == [0, 1, 2]
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in result["curve"]) and 0 < result["scene_chance"] <= 1
    changed = [k for k, v in base.language_model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the LLM itself is what the probe fine-tunes


def test_text_lookup_cli_takes_a_plain_causal_lm(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(probe, "text_lookup", lambda model, processor, steps, seed: calls.append((model, processor))
                        or {"curve": []})  # fmt: skip
    out = tmp_path / "lookup.json"
    lm = "recipes/toy_checkpoints/lm-llama"
    save = tmp_path / "taught"
    assert probe.main(["--text-lookup-steps", "3", "--text-lookup-lm", lm, "--out", str(out), "--save", str(save)]) == 0
    ((model, processor),) = calls
    assert type(model.language_model).__name__ == "LlamaForCausalLM" and processor.tokenizer is not None
    assert json.loads(out.read_text())["base"] == lm
    # --save keeps the plain LM with its tokenizer, loadable as a causal LM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert type(AutoModelForCausalLM.from_pretrained(save)).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(save).get_vocab() == processor.tokenizer.get_vocab()


def test_text_lookup_saves_the_vlm_with_its_taught_llm(tmp_path, monkeypatch):
    def teach(model, processor, steps, seed):
        with torch.no_grad():
            model.language_model.get_input_embeddings().weight.add_(1.0)
        return {"curve": []}

    monkeypatch.setattr(probe, "text_lookup", teach)
    base = "recipes/toy_checkpoints/vlm-caption"
    save = tmp_path / "taught"
    assert probe.main(["--text-lookup-steps", "1", "--save", str(save)]) == 0
    taught, original = probe.VPGTransModel.from_pretrained(save), probe.VPGTransModel.from_pretrained(base)
    emb = [m.language_model.get_input_embeddings().weight for m in (taught, original)]
    assert torch.allclose(emb[0], emb[1] + 1.0)
    assert probe.VPGTransProcessor.from_pretrained(save).tokenizer is not None
