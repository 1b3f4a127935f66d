"""Toy base models, unit level: tokenizer conventions, LM and vision encoder construction and training."""

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, BatchEncoding

from groundvlm.recipes.toyworld import ToyWorld, caption
from groundvlm.recipes.toyworld.corpus import box_codec, lm_corpus, lookup_pairs
from groundvlm.recipes.toyworld.lms import LMSize, box_syntax_rate, evaluate_lm, lm_model, pretrain_lm, t5_split
from groundvlm.recipes.toyworld.tokenizers import paired_token_ids, train_tokenizer
from groundvlm.recipes.toyworld.vision import (
    label_names,
    name_recall,
    normalise,
    pretrain_vision,
    scene_labels,
    sincos_2d,
    token_position_r2,
    vision_model,
)

# The real toy LM corpus of 200 scenes (0.5 s): the tokenizers' vocabularies depend on it.
CORPUS = lm_corpus(200)
TEXT = "a red star located at [14,28,70,112]"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Each family's tokenizer, saved and reloaded through AutoTokenizer."""
    out = {}
    for family in ("opt", "llama", "t5"):
        folder = tmp_path_factory.mktemp(f"tok-{family}")
        train_tokenizer(family, CORPUS).save_pretrained(folder)
        out[family] = AutoTokenizer.from_pretrained(folder)
    return out


def test_opt_convention_bos_is_eos(tokenizers):
    tok = tokenizers["opt"]
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    ids = tok(TEXT).input_ids
    assert ids[0] == 2 and tok.bos_token == tok.eos_token == "</s>" and tok.pad_token_id == 1
    assert ids[-1] != 2  # OPT appends nothing
    assert tok.convert_ids_to_tokens(ids[1:3]) == ["a", "Ġred"]  # byte-level, no prefix space
    assert tok.decode(ids, skip_special_tokens=True) == TEXT


def test_llama_convention_bos_only_no_pad(tokenizers):
    tok = tokenizers["llama"]
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    ids = tok(TEXT).input_ids
    assert ids[0] == 1 and ids[-1] != 2 and tok.pad_token is None
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[1:3] == ["▁a", "▁red"]
    # LLaMA splits every digit (sentencepiece split_digits).
    assert toks[toks.index("4") - 1] == "1" and "14" not in toks
    assert tok.decode(ids, skip_special_tokens=True) == TEXT


def test_t5_convention_eos_appended_no_bos(tokenizers):
    tok = tokenizers["t5"]
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "</s>", "<unk>", "▁"]
    ids = tok(TEXT).input_ids
    assert tok.bos_token is None and ids[-1] == 1 and ids[0] not in (0, 1, 2)
    toks = tok.convert_ids_to_tokens(ids)
    # Punctuation is isolated, so "[" follows a lone "▁" (the id-3 piece VPGTrans drops).
    assert toks[toks.index("[") - 1] == "▁"
    assert tok.decode(ids, skip_special_tokens=True) == TEXT


def test_grid_ticks_are_whole_tokens_in_opt_and_t5(tokenizers):
    for family in ("opt", "t5"):
        toks = tokenizers[family].convert_ids_to_tokens(tokenizers[family](TEXT).input_ids)
        want = ["14", ",", "28", ",", "70", ",", "112", "]"]
        assert any(toks[i : i + len(want)] == want for i in range(len(toks))), toks


def test_newline_round_trips(tokenizers):
    for tok in tokenizers.values():
        assert tok.decode(tok("a red star.\nblue").input_ids, skip_special_tokens=True) == "a red star.\nblue"


def test_cross_tokenizer_pairing(tokenizers):
    opt, llama, t5 = tokenizers["opt"], tokenizers["llama"], tokenizers["t5"]
    # OPT <-> LLaMA keep both BOS: OPT </s> (2) pairs with LLaMA <s> (1).
    pairs = paired_token_ids(opt, llama, "a red star")
    assert pairs is not None and pairs[0] == (2, 1) and len(pairs) == 4
    # OPT <-> T5: OPT BOS and T5 EOS dropped, lengths equal.
    pairs = paired_token_ids(opt, t5, "a red star")
    assert pairs is not None and len(pairs) == 3
    # Box strings: LLaMA splits digits, so they never pair with OPT; with T5 the lone "▁" is dropped.
    assert paired_token_ids(opt, llama, TEXT) is None
    assert paired_token_ids(opt, t5, TEXT) is not None
    # Captions: some pair and some do not, for both target families (rarest words split differently).
    world = ToyWorld(seed=5, split="all")
    captions = [caption(world.scene(i), world.text_rng(i)) for i in range(60)]
    for target in (llama, t5):
        paired = sum(paired_token_ids(opt, target, c) is not None for c in captions)
        assert 0 < paired < len(captions)


def test_bad_family_and_input():
    with pytest.raises(ValueError, match="unknown tokenizer family"):
        train_tokenizer("gpt2", CORPUS)
    with pytest.raises(ValueError, match="non-empty"):
        train_tokenizer("opt", [])


def test_t5_split_rules():
    import random

    rng = random.Random(0)
    assert t5_split("Question: what colour? Short answer: red", rng) == ("Question: what colour? Short answer:", "red")
    assert t5_split("Question: what colour? Answer: red", rng) == ("Question: what colour? Answer:", "red")
    assert t5_split("In the image is a red star located at [0,7,14,21]", rng)[1] == "[0,7,14,21]"
    prefix, suffix = t5_split("a b c d", rng)
    assert f"{prefix} {suffix}" == "a b c d" and prefix and suffix


def test_toy_box_codec_round_trips_scene_boxes():
    """The toy world writes and reads boxes with PIN's codec: every scene object's grid cells encode to text that
    decodes back to the object's pixel box; text that is no box of the grid is refused."""
    codec = box_codec()
    assert (codec.grid_size, codec.image_size) == (16, 112) and codec.ticks[:3] == ["0", "7", "14"]
    world = ToyWorld(seed=3, split="all")
    for i in range(20):
        for obj in world.scene(i).objects:
            text = codec.encode_cells(obj.grid_box)
            box, ok, _ = codec.decode(" " + text)
            assert ok and box == [float(v) for v in obj.box], (text, obj.box)
    assert codec.decode(" [14,28,70,113]")[1] is False  # not a tick
    assert codec.decode(" [70,28,14,112]")[1] is False  # x1 >= x2


def test_box_syntax_rate_reads_continuations_with_the_codec():
    class Tokenizer:  # decodes every continuation to `text`
        def __init__(self, text):
            self.text = text

        def __call__(self, prompt, return_tensors=None):
            return BatchEncoding({"input_ids": torch.zeros(1, 2, dtype=torch.long)})

        def decode(self, ids, skip_special_tokens=True):
            return self.text

    model = torch.nn.Linear(1, 1)
    model.generate = lambda input_ids, **kwargs: torch.zeros(1, 4, dtype=torch.long)
    for text, expected in (("[14,28,70,112]", 1.0), (" [14,28,70,112] x", 1.0), ("[14,28,70,113]", 0.0)):
        assert box_syntax_rate("opt-small", model, Tokenizer(text), ["p"], box_codec()) == expected


@pytest.mark.parametrize("name", ["opt-small", "llama", "t5"])
def test_lm_trains_saves_and_loads(name, tokenizers, tmp_path):
    family = {"opt-small": "opt", "llama": "llama", "t5": "t5"}[name]
    tok = tokenizers[family]
    model = lm_model(name, tok, LMSize(32, 1, 2))
    before = evaluate_lm(name, model, tok, CORPUS[:64])["loss"]
    pretrain_lm(name, model, tok, CORPUS, steps=12, batch_size=16, lr=3e-3)
    after = evaluate_lm(name, model, tok, CORPUS[:64])["loss"]
    assert after < before - 0.5
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    auto = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path)
    reloaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (
        type(loaded).__name__
        == {"opt": "OPTForCausalLM", "llama": "LlamaForCausalLM", "t5": "T5ForConditionalGeneration"}[family]
    )
    assert loaded.config.vocab_size == len(reloaded_tok) == len(tok)
    assert loaded.generation_config.eos_token_id == tok.eos_token_id
    assert evaluate_lm(name, loaded, reloaded_tok, CORPUS[:64])["loss"] == pytest.approx(after, abs=1e-4)


def test_lm_special_ids_follow_tokenizer(tokenizers):
    opt = lm_model("opt-small", tokenizers["opt"], LMSize(32, 1, 2)).config
    assert (opt.bos_token_id, opt.eos_token_id, opt.pad_token_id) == (2, 2, 1)
    t5 = lm_model("t5", tokenizers["t5"], LMSize(32, 1, 2)).config
    assert (t5.pad_token_id, t5.eos_token_id, t5.decoder_start_token_id) == (0, 1, 0)


@pytest.mark.parametrize("kind", ["blip2", "clip", "dinov2"])
def test_vision_encoder_shape_init_and_image_dependence(kind, tmp_path):
    model = vision_model(kind, hidden_size=32, num_layers=1, num_heads=2).eval()
    assert model.config.initializer_range == 0.02
    images = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = model(pixel_values=normalise(kind, images)).last_hidden_state
    assert out.shape == (2, 257, 32)  # 16 x 16 patches of 7 px + CLS
    # The 1e-10 BLIP-2 default made outputs image-independent; with 0.02 two images differ clearly.
    assert (out[0] - out[1]).abs().mean() > 1e-2
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["initializer_range"] == 0.02
    # AutoModel knows CLIPVisionConfig and Dinov2Config; Blip2VisionConfig is loaded by its own class.
    loader = type(model) if kind == "blip2" else AutoModel
    loaded = loader.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    with torch.no_grad():
        again = loaded.eval()(pixel_values=normalise(kind, images)).last_hidden_state
    assert torch.allclose(again, out, atol=1e-5)


def test_sincos_position_init_makes_tokens_say_where_they_are():
    table = sincos_2d(16, 32)
    assert table.shape == (256, 32)
    # Patch (row 0, column 1) = index 1: the column half encodes 1, the row half encodes 0 (sin 0, cos 1).
    assert torch.allclose(table[1, :8], torch.sin(torch.tensor(1.0) / 10000 ** (torch.arange(8) / 8)), atol=1e-6)
    assert torch.allclose(table[1, 16:24], torch.zeros(8)) and torch.allclose(table[1, 24:], torch.ones(8))
    assert len({tuple(r.tolist()) for r in table}) == 256  # every patch its own code
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(16, 30)

    images = normalise("blip2", torch.randint(0, 256, (8, 112, 112, 3), dtype=torch.uint8))
    torch.manual_seed(0)
    learned = vision_model("blip2", hidden_size=32, num_layers=1, num_heads=2).eval()
    torch.manual_seed(0)
    sincos = vision_model("blip2", hidden_size=32, num_layers=1, num_heads=2, position_init="sincos").eval()
    assert torch.equal(sincos.embeddings.position_embedding[0, 0], torch.zeros(32))  # CLS row
    assert torch.allclose(sincos.embeddings.position_embedding[0, 1:], sincos_2d(16, 32))
    # Untrained, a token's own column/row is read off linearly from the sine-cosine encoder, hardly from the
    # random-init one (its std-0.02 table is tiny next to the noise images' patch embeddings).
    good, poor = token_position_r2(sincos, images), token_position_r2(learned, images)
    assert min(good.values()) > 0.8 and max(poor.values()) < 0.2, (good, poor)
    with pytest.raises(ValueError, match="position_init"):
        vision_model("blip2", 32, 1, 2, position_init="rope")
    with pytest.raises(ValueError, match="blip2 kind only"):
        vision_model("clip", 32, 1, 2, position_init="sincos")


def test_vision_normalise_matches_image_processor():
    from PIL import Image

    from groundvlm.recipes.toyworld.vision import image_processor

    img = torch.randint(0, 256, (1, 112, 112, 3), dtype=torch.uint8)
    for kind in ("blip2", "clip", "dinov2"):
        ref = image_processor(kind)(Image.fromarray(img[0].numpy()), return_tensors="pt").pixel_values
        assert ref.shape == (1, 3, 112, 112)
        assert torch.allclose(normalise(kind, img), ref, atol=2e-2)


def test_vision_pretraining_loss_decreases_and_labels():
    labels = label_names(["red star", "blue ring"])
    assert labels == [
        "category:red star",
        "category:blue ring",
        "colour:blue",
        "colour:red",
        "shape:ring",
        "shape:star",
    ]
    objects = [[("red star", "red", "star")], [("blue ring", "blue", "ring")]] * 8
    targets = scene_labels(objects, labels)
    assert targets[0].tolist() == [1, 0, 0, 1, 0, 1]
    # Two classes the encoder can tell apart: a red image and a blue one.
    images = torch.zeros(16, 112, 112, 3, dtype=torch.uint8)
    images[0::2, ..., 0] = 220
    images[1::2, ..., 2] = 220
    model = vision_model("blip2", hidden_size=32, num_layers=1, num_heads=2)
    head, out = pretrain_vision("blip2", model, images, targets, steps=15, batch_size=8, lr=3e-3)
    assert sum(out["losses"][-3:]) / 3 < out["losses"][0] - 0.1
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(head(model(pixel_values=normalise("blip2", images)).last_hidden_state.mean(1)))
    recall = name_recall(probs, objects, labels)
    assert set(recall) == {"name_recall", "colour_recall", "shape_recall"}
    with pytest.raises(ValueError, match="uint8"):
        pretrain_vision("blip2", model, images.float(), targets, steps=1, batch_size=2, lr=1e-3)
    with pytest.raises(ValueError, match="unknown vision encoder kind"):
        vision_model("eva", 32, 1, 2)


def test_name_recall_is_ranked_per_scene():
    labels = label_names(["red star", "blue ring", "red ring"])
    # columns: category red star, blue ring, red ring | colour blue, red | shape ring, star
    probs = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3, 0.1, 0.2, 0.1],  # one red star: category right, colour wrong, shape wrong
            [0.1, 0.3, 0.2, 0.6, 0.7, 0.4, 0.5],  # blue ring + red ring: top-2 categories {blue ring, red ring}
        ]
    )
    objects = [[("red star", "red", "star")], [("blue ring", "blue", "ring"), ("red ring", "red", "ring")]]
    recall = name_recall(probs, objects, labels)
    # names: 1 + 2 of 3; colours: 0 + 2 of 3 (top-2 of {blue, red}); shapes: 0 + 0 (top-1 is star) of 3
    assert recall == {"name_recall": 1.0, "colour_recall": pytest.approx(2 / 3), "shape_recall": 0.0}


def test_build_lock_says_when_it_waits_for_another_process(tmp_path, capsys):
    """A process that finds a toy artefact's build lock taken says so on stderr, then waits until it is free."""
    import fcntl
    import threading

    from groundvlm.recipes.toyworld.build import _lock

    path = tmp_path / ".lm-llama.lock"
    with _lock(path):
        pass
    assert "waiting" not in capsys.readouterr().err  # free: no message
    holder = open(path, "w")  # noqa: SIM115 (released by the timer below)
    fcntl.flock(holder, fcntl.LOCK_EX)
    timer = threading.Timer(0.3, holder.close)
    timer.start()
    with _lock(path):
        pass
    timer.join()
    assert f"another process holds {path}; waiting" in capsys.readouterr().err


def test_lookup_pairs_answer_from_the_prompt():
    """Every lookup's answer is read off its own prompt: a caption question names an attribute the caption lists
    with the asked one, and PIN's question asks for a box listed right after the asked name; the corpus is
    unchanged by them (own generators), and they are deterministic."""
    from groundvlm.recipes.toyworld import ToyWorld

    pairs = lookup_pairs(60, seed=3)
    assert pairs == lookup_pairs(60, seed=3) and lm_corpus(5) == CORPUS[: len(lm_corpus(5))]
    boxes = [(p, a) for p, a in pairs if " located at" in p]
    questions = [(p, a) for p, a in pairs if " Question: " in p]
    assert boxes and questions and len(boxes) + len(questions) == len(pairs)
    for prompt, answer in boxes:
        context, asked = prompt.split(". In the image is ")
        name = asked.split(" ", 1)[1].removesuffix(" located at")
        assert f"{name}{answer}" in context and context.count("[") >= 2
    for prompt, answer in questions:
        caption, question = prompt.split(" Question: ")
        assert question.endswith(" Answer:") and answer.strip() in caption
    world = ToyWorld(seed=3, split="all")
    multi = sum(len(world.scene(i).objects) >= 2 for i in range(60))
    assert len({p.split(". In the image is ")[0] for p, _ in boxes}) == multi  # one listed context per scene


def test_lookup_pairs_distractors_pad_the_list_and_are_never_asked():
    """`max_listed` pads PIN's listed objects with absent categories (random boxes) up to a drawn length; the asked
    object is always one of the scene's, its box the true one; without it the pairs are those of before."""
    from groundvlm.recipes.toyworld import ToyWorld

    plain = lookup_pairs(40, seed=5)
    padded = lookup_pairs(40, seed=5, max_listed=6)
    assert padded == lookup_pairs(40, seed=5, max_listed=6) and len(padded) == len(plain)
    world = ToyWorld(seed=5, split="all")
    scene_names = {}
    for i in range(40):
        scene = world.scene(i)
        for o in scene.objects:
            scene_names.setdefault(o.name, set()).add(i)
    lengths = []
    for (p0, a0), (p1, a1) in zip(plain, padded):
        if " located at" not in p0:
            assert (p0, a0) == (p1, a1)  # the caption questions are untouched
            continue
        assert a0 == a1  # the same object asked, its true box
        context, asked = p1.split(". In the image is ")
        name = asked.split(" ", 1)[1].removesuffix(" located at")
        assert context.count(f" {name} [") + context.startswith(f"{name} [") <= 1 and f"{name}{a1}" in context
        n_plain, n_padded = p0.split(". In")[0].count("["), context.count("[")
        assert n_plain <= n_padded <= 6
        lengths.append(n_padded - n_plain)
    assert max(lengths) >= 3 and min(lengths) == 0  # padded to drawn lengths, sometimes not at all
    with pytest.raises(ValueError, match="max_listed must lie in"):
        lookup_pairs(2, max_listed=1)
