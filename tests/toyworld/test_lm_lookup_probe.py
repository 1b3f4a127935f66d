"""benchmarks/lm_lookup_probe.py: the lookup texts are right, the answer-only loss sees only the label, and a run on a
tiny LM writes its accuracy curve."""

import functools
import json
import random
import re

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from groundvlm.recipes.toyworld.lms import LMSize, lm_model
from tests._benchmarks import load_benchmark

probe = load_benchmark("lm_lookup_probe")
TOKENIZER = "recipes/toy_checkpoints/tokenizer-llama"


@pytest.fixture
def tiny_lm(tmp_path):
    """A 16-wide 1-layer toy Llama with the toy tokenizer, saved as <tmp_path>/lm (what the tests fine-tune)."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    lm_model("llama", tok, LMSize(16, 1, 2)).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    return tmp_path / "lm"


def test_lookup_text_answers_with_the_label_of_the_asked_item():
    rng = random.Random(0)
    for _ in range(50):
        question, answer, k = probe.lookup_text(rng)
        context, asked = question.split(". the ")
        asked = asked.removesuffix(" is")
        words = context.split(" ")
        pairs = {" ".join(words[i + 2 : i + 4]): words[i] for i in range(0, len(words), 4)}
        assert len(pairs) == k and 2 <= k <= 8
        assert answer == f" {pairs[asked]}"
    assert 0.2 < probe.chance() < 0.35
    question, answer, k = probe.lookup_text(random.Random(5), label_last=True)
    words = question.split(". the ")[0].split(" ")
    pairs = {" ".join(words[i + 1 : i + 3]): words[i + 3] for i in range(0, len(words), 4)}
    assert len(pairs) == k and answer == f" {pairs[question.split('. the ')[1].removesuffix(' is')]}"


def test_answer_only_batch_keeps_exactly_the_label_token():
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    rng = random.Random(1)
    same = random.Random(1)
    texts = [probe.lookup_text(same) for _ in range(4)]  # what the batch draws from the same seed
    batch = probe.batch(tok, rng, 4, answer_only=True)
    kept = batch["labels"] != -100
    assert kept.sum(1).tolist() == [1, 1, 1, 1]
    for row, (_, answer, _) in zip(range(4), texts):
        label = batch["labels"][row][kept[row]].item()
        assert tok.convert_ids_to_tokens(label) == answer.strip()
    full = probe.batch(tok, random.Random(1), 4, answer_only=False)
    assert (full["labels"] != -100).sum() == full["attention_mask"].sum()


def test_probe_runs_on_a_tiny_lm_and_writes_the_curve(tmp_path, tiny_lm):
    out = tmp_path / "probe.json"
    result = probe.main(
        [
            "--lm",
            str(tmp_path / "lm"),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--eval-every",
            "1",
            "--eval-n",
            "5",
            "--answer-only",
            "--max-items",
            "3",
            "--out",
            str(out),
        ]
    )
    assert [step for step, _, _ in result["accuracy_curve"]] == [0, 1, 2]
    assert all(0 <= acc <= 1 for _, acc, _ in result["accuracy_curve"])
    written = json.loads(out.read_text())
    assert written["answer_only"] is True and written["max_items"] == 3 and written["random_init"] is False
    assert written["answer_token_accuracy"] and all(0.0 <= a <= 1.0 for a in written["answer_token_accuracy"])
    assert written["chance"] > 0.4  # lists of 2-3 items: chance = mean of 1/2 and 1/3


def test_bad_arguments_are_refused():
    for argv in (["--max-items", "11"], ["--max-items", "1"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit):
            probe.main(argv)


def test_random_init_control_starts_from_fresh_weights(tmp_path):
    """`--random-init` keeps the LM's architecture and drops its weights; the run records which it was."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(1)
    saved = lm_model("llama", tok, LMSize(16, 1, 2))
    saved.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    torch.manual_seed(0)
    fresh, loaded = probe.load_lm(str(tmp_path / "lm"), random_init=True), probe.load_lm(str(tmp_path / "lm"))
    assert type(fresh) is type(saved) and fresh.config.hidden_size == 16
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(loaded.state_dict()[weight], saved.state_dict()[weight])
    assert not torch.equal(fresh.state_dict()[weight], saved.state_dict()[weight])
    args = ["--lm", str(tmp_path / "lm"), "--steps", "0", "--eval-n", "5", "--random-init"]
    assert probe.main(args)["random_init"] is True


@pytest.mark.parametrize("family", ["llama", "opt-small"])
def test_random_init_widens_and_deepens_either_lm_family(tmp_path, family):
    """`--hidden-size/--num-hidden-layers` build a wider, deeper fresh LM of the same family: heads keep their size,
    the MLP its ratio (OPT names it `ffn_dim` and projects its embeddings at `word_embed_proj_dim`)."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    lm_model(family, tok, LMSize(16, 1, 2)).save_pretrained(tmp_path / "lm")
    wide = probe.load_lm(str(tmp_path / "lm"), random_init=True, hidden_size=32, num_hidden_layers=3)
    config = wide.config
    assert config.hidden_size == 32 and config.num_hidden_layers == 3 and config.num_attention_heads == 4
    mlp = config.ffn_dim if family.startswith("opt") else config.intermediate_size
    small = AutoConfig.from_pretrained(tmp_path / "lm")
    assert mlp == 2 * (small.ffn_dim if family.startswith("opt") else small.intermediate_size)
    ids = torch.tensor([[1, 2, 3]])
    assert wide(input_ids=ids).logits.shape == (1, 3, config.vocab_size)


def test_several_queries_answer_the_earlier_ones_and_answer_only_keeps_every_answer():
    """`queries=3`: three distinct items asked, the first two answered in the text; the answer-only loss keeps all
    three answers and no label of the context."""
    question, answer, k = probe.lookup_text(random.Random(0), queries=3)
    context, *asked = question.split(". the ")
    words = context.split(" ")
    pairs = {" ".join(words[i + 2 : i + 4]): words[i] for i in range(0, len(words), 4)}
    assert len(asked) == 3 and len({a.rsplit(" is", 1)[0] for a in asked}) == 3
    for earlier in asked[:2]:
        name, label = earlier.split(" is ")
        assert pairs[name] == label
    assert answer == f" {pairs[asked[2].removesuffix(' is')]}"
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    draw = functools.partial(probe.lookup_text, queries=3, max_items=4)
    same = random.Random(2)
    texts = [draw(same) for _ in range(3)]
    batch = probe.batch(tok, random.Random(2), 3, answer_only=True, draw=draw)
    for row, (question, answer, _) in enumerate(texts):
        answers = [part.split(" is ")[1] for part in (question + answer).split(". the ")[1:]]
        kept = batch["labels"][row][batch["labels"][row] != -100]
        assert tok.convert_ids_to_tokens(kept.tolist()) == answers


def test_corpus_mix_rows_are_corpus_texts_labelled_whole():
    """`mix=0.5` of 4 rows: the last two are corpus texts with every real token labelled; the first two lookups keep
    only their answer."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    corpus = ["a red star in the image.", "There are two objects in the image."]
    whole = functools.partial(random.Random.choice, seq=corpus)
    batch = probe.batch(tok, random.Random(3), 4, answer_only=True, whole=whole, mix=0.5)
    kept = batch["labels"] != -100
    assert kept[:2].sum(1).tolist() == [1, 1]
    assert torch.equal(kept[2:], batch["attention_mask"][2:] == 1)
    decoded = {
        tok.decode(row[mask == 1], skip_special_tokens=True)
        for row, mask in zip(batch["input_ids"][2:], batch["attention_mask"][2:])
    }
    assert decoded <= set(corpus)


def test_repeat_text_repeats_its_run():
    rng = random.Random(4)
    for _ in range(20):
        first, second = probe.repeat_text(rng).split(". ")
        assert first == second and 4 <= len(first.split(" ")) <= 24


def test_repeat_mix_run_records_the_copy_accuracy_curve(tmp_path, tiny_lm):
    argv = ["--lm", str(tmp_path / "lm"), "--steps", "2", "--batch-size", "4", "--eval-every", "1", "--eval-n", "3"]
    result = probe.main([*argv, "--repeat-mix", "0.5"])
    assert [step for step, _ in result["copy_accuracy_curve"]] == [0, 1, 2]
    assert all(0 <= acc <= 1 for _, acc in result["copy_accuracy_curve"]) and result["repeat_mix"] == 0.5
    plain = probe.main(argv)
    assert "copy_accuracy_curve" not in plain and "copula_free_accuracy_curve" not in plain
    free = probe.main([*argv, "--copula-free", "0.5", "--label-last"])
    assert [step for step, _ in free["copula_free_accuracy_curve"]] == [0, 1, 2]
    with pytest.raises(SystemExit):
        probe.main([*argv, "--repeat-mix", "0.5", "--corpus-mix", "0.5"])


def test_copula_free_questions_drop_is_and_keep_the_answer():
    rng = random.Random(6)
    free = [probe.lookup_text(rng, label_last=True, copula_free=1.0) for _ in range(20)]
    assert all(not question.endswith(" is") for question, _, _ in free)
    for question, answer, _ in free:
        context, asked = question.split(". the ")
        words = context.split(" ")
        pairs = {" ".join(words[i + 1 : i + 3]): words[i + 3] for i in range(0, len(words), 4)}
        assert answer == f" {pairs[asked]}"
    assert all(q.endswith(" is") for q, _, _ in (probe.lookup_text(rng, copula_free=0.0) for _ in range(20)))


def test_single_token_lookups_pair_a_shape_with_a_colour_and_label_only_the_colour_answers():
    from groundvlm.recipes.toyworld.objects import COLOURS, SHAPES

    rng = random.Random(7)
    question, answer, k = probe.lookup_text(rng, label_last=True, single_token=True, copula_free=1.0, max_items=4)
    context, asked = question.split(". the ")
    words = context.split(" ")
    pairs = dict(zip(words[::2], words[1::2]))
    assert len(pairs) == k and set(pairs) <= set(SHAPES) and set(pairs.values()) <= set(COLOURS)
    assert answer == f" {pairs[asked]}"
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    draw = functools.partial(probe.lookup_text, label_last=True, single_token=True, queries=2, max_items=4)
    same = random.Random(8)
    texts = [draw(same) for _ in range(3)]
    batch = probe.batch(tok, random.Random(8), 3, True, draw, label_words=[f"▁{c}" for c in COLOURS])
    for row, (question, answer, _) in enumerate(texts):
        answers = [f"▁{part.split(' is ')[1]}" for part in (question + answer).split(". the ")[1:]]
        kept = batch["labels"][row][batch["labels"][row] != -100]
        assert tok.convert_ids_to_tokens(kept.tolist()) == answers
    with pytest.raises(SystemExit):
        probe.main(["--single-token", "--max-items", "9"])


def test_box_labels_ask_pins_prompt_and_answer_with_the_asked_items_box():
    rng = random.Random(3)
    for _ in range(20):
        question, answer, k = probe.lookup_text(rng, max_items=4, label_last=True, box_labels=True, queries=2)
        context, *asks = question.split(". In the image is a ")
        words = context.split(" ")
        boxes = {" ".join(words[i : i + 2]): words[i + 2] for i in range(1, len(words), 4)}  # "a red star [..]"
        assert len(boxes) == k and len(set(boxes.values())) == k
        for ask in asks[:-1]:  # answered earlier queries
            name, box = ask.split(" located at ")
            assert boxes[name] == box
        assert asks[-1].endswith(" located at") and answer == " " + boxes[asks[-1].removesuffix(" located at")]
        assert answer.startswith(" [") and answer.endswith("]") and answer.count(",") == 3


def test_answer_only_box_labels_keep_every_asked_box_and_the_replay_whole():
    """With boxes as labels the answer-only loss is on every token of every asked box (the answered ones and the last)
    -- never on the context's listed boxes -- and replayed corpus rows stay labelled whole."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    draw = functools.partial(probe.lookup_text, max_items=4, label_last=True, box_labels=True, queries=3)
    same = random.Random(4)
    drawn = [draw(same) for _ in range(6)]  # what the batch draws from the same seed
    batch = probe.batch(
        tok, random.Random(4), 8, answer_only=True, draw=draw, whole=lambda r: "a red star", mix=0.25, box_answers=True
    )
    for row, (question, answer, items) in enumerate(drawn):
        text = question + answer
        context, asked_part = text.split(". ", 1)
        asked = re.findall(r"located at (\[[0-9,]+\])", asked_part)
        assert len(asked) == min(3, items - 1) and context.count("[") == items
        kept = batch["labels"][row][batch["labels"][row] != -100]
        assert tok.decode(kept).replace(" ", "") == "".join(asked)
    replay = batch["labels"][7][batch["attention_mask"][7] == 1]
    assert (replay != -100).all()


def test_several_queries_never_ask_every_item():
    """A text asks at most items - 1 of its items, so no answer follows by elimination (the one item not yet asked)."""
    rng = random.Random(0)
    for box_labels in (False, True):
        for _ in range(200):
            question, _, items = probe.lookup_text(rng, max_items=3, box_labels=box_labels, label_last=True, queries=5)
            asked = question.count(". ")
            assert 1 <= asked <= items - 1


def test_accuracy_needs_every_token_of_a_multi_token_answer():
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    draw = functools.partial(probe.lookup_text, max_items=2, label_last=True, box_labels=True)
    question, answer, _ = draw(random.Random(0))
    ids = tok(question + answer).input_ids
    length = len(ids) - len(tok(question).input_ids)
    assert length > 3  # a box is several tokens

    class Oracle(torch.nn.Module):
        """Predicts the true next token of the one held-out text everywhere, except (`wrong`) at one answer token."""

        def __init__(self, wrong: int | None):
            super().__init__()
            self.wrong, self.device = wrong, torch.device("cpu")

        def forward(self, input_ids):
            logits = torch.zeros(1, input_ids.shape[1], len(tok))
            for position in range(input_ids.shape[1]):
                logits[0, position, ids[position + 1]] = 1.0
            if self.wrong is not None:
                logits[0, -length + self.wrong] = torch.roll(logits[0, -length + self.wrong], 1)
            return type("Out", (), {"logits": logits})

    assert probe.accuracy(Oracle(None), tok, 1, draw, seed=0) == 1.0
    assert probe.accuracy(Oracle(length - 1), tok, 1, draw, seed=0) == 0.0  # the last token wrong: a miss
    # per answer token: only the wrong position scores 0
    assert probe.answer_token_accuracy(Oracle(None), tok, 1, draw, seed=0) == [1.0] * length
    assert probe.answer_token_accuracy(Oracle(1), tok, 1, draw, seed=0) == [1.0, 0.0] + [1.0] * (length - 2)


def test_curriculum_runs_its_stages_in_order_and_scores_the_last_form(tmp_path, tiny_lm):
    args = ["--lm", str(tmp_path / "lm"), "--batch-size", "4", "--eval-every", "2", "--eval-n", "3", "--max-items", "3"]
    result = probe.main([*args, "--curriculum", "one-token-free:1", "one-token:2", "boxes:3", "--label-last"])
    assert result["steps"] == 6
    # each stage is scored at its end and at every --eval-every step
    assert [(step, name) for step, name, _ in result["stage_accuracy_curve"]] == [
        (1, "one-token-free"), (2, "one-token"), (3, "one-token"), (4, "boxes"), (6, "boxes")
    ]  # fmt: skip
    assert [step for step, _, _ in result["accuracy_curve"]] == [0, 1, 2, 3, 4, 6]
    assert 0.2 < result["chance"] < 0.5  # 2-3 boxes to pick from
    for bad in (["--curriculum", "nope:3"], ["--curriculum", "boxes"], ["--curriculum", "boxes:2", "--single-token"]):
        with pytest.raises(SystemExit):
            probe.main([*args, *bad])


def test_save_keeps_the_tokenizer_as_it_came_and_the_trained_weights(tmp_path, tiny_lm):
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    assert tok.pad_token is None  # the probe pads with </s> while training
    args = ["--lm", str(tmp_path / "lm"), "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--eval-n", "2"]
    probe.main([*args, "--max-items", "3", "--save", str(tmp_path / "taught")])
    saved = AutoTokenizer.from_pretrained(tmp_path / "taught")
    assert saved.pad_token is None and saved.get_vocab() == tok.get_vocab()
    before = probe.load_lm(str(tmp_path / "lm")).state_dict()
    after = probe.load_lm(str(tmp_path / "taught")).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_one_token_names_with_digit_labels():
    rng = random.Random(4)
    for _ in range(20):
        question, answer, k = probe.lookup_text(rng, max_items=4, single_token=True, digit_labels=True, label_last=True)
        words = question.split(". the ")[0].split(" ")
        pairs = dict(zip(words[0::2], words[1::2]))  # "ring 7 square 9"
        assert len(pairs) == k and all(label.isdigit() for label in pairs.values())
        assert answer == " " + pairs[question.split(". the ")[1].removesuffix(" is")]
    assert probe.FORMS["one-token-digits"]["digit_labels"] is True


def test_restart_per_stage_builds_a_fresh_optimizer_at_each_stage(tmp_path, tiny_lm, monkeypatch):
    built = []
    real = torch.optim.AdamW
    monkeypatch.setattr(probe.torch.optim, "AdamW", lambda *a, **k: built.append(1) or real(*a, **k))
    args = ["--lm", str(tmp_path / "lm"), "--batch-size", "2", "--eval-every", "5", "--eval-n", "1", "--max-items", "3",
            "--curriculum", "one-token-free:1", "one-token:1", "names:1"]  # fmt: skip
    probe.main(args)
    assert len(built) == 1
    result = probe.main([*args, "--restart-per-stage"])
    assert len(built) == 1 + 3 and result["restart_per_stage"] is True


def test_seed_changes_the_training_texts_not_the_held_out_lookups(tmp_path, tiny_lm):
    argv = ["--lm", str(tmp_path / "lm"), "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--eval-n", "5",
            "--max-items", "3"]  # fmt: skip
    runs = [probe.main([*argv, "--seed", str(seed)]) for seed in (0, 1, 0)]
    assert [r["seed"] for r in runs] == [0, 1, 0]
    assert runs[0]["accuracy_curve"][0] == runs[1]["accuracy_curve"][0]  # step 0: the same model, the same lookups
    assert runs[0]["accuracy_curve"] == runs[2]["accuracy_curve"]  # a seed reproduces its run
    assert runs[0]["accuracy_curve"][-1][2] != runs[1]["accuracy_curve"][-1][2]  # other texts: another loss


def test_two_word_names_with_one_token_word_labels():
    """The `names-word` form: Groma's lookup shape — each label one token of the toy tokenizer, each key a two-word
    name; the answer-only batch keeps exactly those label tokens."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    rng = random.Random(6)
    for _ in range(20):
        question, answer, k = probe.lookup_text(rng, max_items=4, word_labels=True)
        words = question.split(". the ")[0].split(" ")
        pairs = {" ".join(words[i + 2 : i + 4]): words[i] for i in range(0, len(words), 4)}  # "dotted a red star"
        assert len(pairs) == k and set(pairs.values()) <= set(probe.WORD_LABELS)
        assert answer == " " + pairs[question.split(". the ")[1].removesuffix(" is")]
        assert len(tok(question + answer).input_ids) == len(tok(question).input_ids) + 1  # one label token
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    draw = functools.partial(probe.lookup_text, max_items=4, word_labels=True)
    words = [f"▁{word}" for word in probe.WORD_LABELS]
    batch = probe.batch(tok, random.Random(2), 4, answer_only=True, draw=draw, label_words=words)
    assert (batch["labels"] != -100).sum(1).tolist() == [1, 1, 1, 1]
    assert probe.FORMS["names-word"]["word_labels"] is True


def test_fused_names_put_each_key_in_one_added_token_right_after_its_label(tmp_path, tiny_lm):
    """The `fused-names` form: label first, each item one added token right after its label (Groma's
    `<r_j><region>`), the question in two words; a curriculum with it adds the tokens to the tokenizer and the LM."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.add_tokens(probe.FUSED_NAMES)
    rng = random.Random(3)
    for _ in range(20):
        question, answer, k = probe.lookup_text(rng, max_items=4, word_labels=True, fused_names=True)
        tokens = tok.tokenize(question.split(". the ")[0])
        assert len(tokens) == 2 * k and all(t in probe.FUSED_NAMES for t in tokens[1::2])  # label, key, label, key
        pairs = {t[1:-1].replace("_", " "): label.removeprefix("▁") for label, t in zip(tokens[0::2], tokens[1::2])}
        assert answer == " " + pairs[question.split(". the ")[1].removesuffix(" is")]
    result = probe.main(["--lm", str(tiny_lm), "--curriculum", "one-token:2", "fused-names:2", "--eval-every", "2",
                         "--eval-n", "4", "--batch-size", "4", "--max-items", "3", "--save", str(tmp_path / "saved")])  # fmt: skip
    assert [row[1] for row in result["stage_accuracy_curve"]] == ["one-token", "fused-names"]
    assert len(AutoTokenizer.from_pretrained(tmp_path / "saved")) == len(tok)


def test_fused_exact_asks_with_the_key_token_itself():
    """`fused-exact`, the control of `fused-names`: the question names the item by its added token too."""
    rng = random.Random(8)
    for _ in range(10):
        question, answer, k = probe.lookup_text(rng, max_items=4, word_labels=True, fused_names=True,
                                                fused_question=True)  # fmt: skip
        context, asked = question.split(". the ")[0], question.split(". the ")[-1].removesuffix(" is")
        assert asked in probe.FUSED_NAMES and asked in context
        assert context.split(asked)[0].split(" ")[-1] == answer.strip()  # the label right before the key
    assert probe.FORMS["fused-exact"]["fused_question"] is True


def test_pick_chance_is_one_over_the_items_at_x1_and_a_copy_after_it():
    """The random-pick baseline per answer token: "[" is always right, x1 about 1/items (more where listed boxes share
    an x1), the tokens after it nearly always (the picked box is copied); every position within [0, 1]."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    two = functools.partial(probe.lookup_text, max_items=2, label_last=True, box_labels=True)
    chance = probe.pick_chance_by_token(tok, 300, two)
    assert all(0.0 <= c <= 1.0 for c in chance) and chance[0] == 1.0
    x1 = next(i for i, c in enumerate(chance) if c < 0.9)  # the first position where the pick is made
    assert 0.5 <= chance[x1] < 0.65 and min(chance[x1 + 1 :]) > 0.85
    eight = functools.partial(probe.lookup_text, min_items=8, max_items=8, label_last=True, box_labels=True)
    assert probe.pick_chance_by_token(tok, 300, eight)[x1] < chance[x1]


def test_boxes_free_form_asks_the_name_right_before_its_box():
    """The curriculum's "boxes-free" stage: PIN's box lookup without " located at", so the asked name stands right
    before the box as each listed name does; the "boxes" stage keeps PIN's prompt."""
    assert probe.parse_curriculum(["boxes-free:10", "boxes:20"]) == [("boxes-free", 10), ("boxes", 20)]
    rng = random.Random(5)
    for _ in range(10):
        question, answer, _ = probe.lookup_text(
            rng, max_items=4, label_last=True, queries=2, **probe.FORMS["boxes-free"]
        )
        context, *asks = question.split(". In the image is a ")
        assert "located at" not in question and f"{asks[-1]}{answer}" in context


def test_box_lookup_with_one_token_keys_lists_distinct_shapes():
    """`single_token` with box labels: the keys are shapes (one token each, distinct in a text), PIN's prompt names
    the asked shape, and the answer is its listed box."""
    from groundvlm.recipes.toyworld.objects import SHAPES

    rng = random.Random(6)
    for _ in range(10):
        question, answer, k = probe.lookup_text(rng, max_items=6, label_last=True, box_labels=True, single_token=True)
        context, asked = question.split(". In the image is a ")
        words = context.split(" ")
        keys = words[1::3]  # "a star [..] a moon [..]"
        assert len(keys) == k == len(set(keys)) and all(key in SHAPES for key in keys)
        shape = asked.removesuffix(" located at")
        assert f"a {shape}{answer}" in context


def test_batch_streams_are_reproducible_and_the_thread_keeps_the_serial_order(tmp_path, tiny_lm):
    """The default stream (one prefetching thread) yields the batches of drawing each in turn; worker processes give
    their own stream, the same on every run."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.pad_token, tok.padding_side = tok.eos_token, "right"
    draw = functools.partial(probe.lookup_text, max_items=4, label_last=True, box_labels=True, queries=2)

    def make(rng):
        return probe.batch(tok, rng, 4, True, draw, box_answers=True)

    serial_rng = random.Random(1)
    serial = [make(serial_rng) for _ in range(3)]
    stream = probe.BatchStream(make, random.Random(1))
    threaded = [stream.next(more=i < 2) for i in range(3)]
    stream.close()
    for a, b in zip(serial, threaded):
        assert all(torch.equal(a[key], b[key]) for key in a)
    args = ["--lm", str(tmp_path / "lm"), "--batch-size", "4", "--eval-every", "2", "--eval-n", "3", "--steps", "4"]
    args += ["--box-labels", "--label-last", "--answer-only", "--max-items", "3", "--data-workers", "2"]
    first, second = probe.main(args), probe.main(args)
    assert first["accuracy_curve"] == second["accuracy_curve"] and first["data_workers"] == 2
    with pytest.raises(SystemExit):
        probe.main([*args[:-1], "-1"])


def test_drawing_rate_reports_batches_per_second_per_worker_count(tmp_path):
    from tests._benchmarks import load_benchmark

    rate = load_benchmark("lookup_drawing_rate")
    out = tmp_path / "rate.json"
    result = rate.main(
        ["--lm", TOKENIZER, "--workers", "0", "1", "--batch-size", "4", "--batches", "2", "--out", str(out)]
    )
    assert set(result["batches_per_second_by_workers"]) == {"0", "1"}
    assert all(r > 0 for r in result["batches_per_second_by_workers"].values())
    assert json.loads(out.read_text()) == result
