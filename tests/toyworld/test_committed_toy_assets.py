"""The committed cpu-preset toy assets Groma's CPU default runs on (recipes/toy_checkpoints/{tokenizer-llama,lm-llama,
vision-dinov2}): their files match their SHA256SUMS, their recorded fingerprints are the current cpu preset's, and
toy_asset / the toy Groma build copy exactly those bytes into an empty cache without training anything (seconds)."""

import hashlib
import json
import shutil

import pytest
from safetensors.torch import load_file

from groundvlm.recipes.toyworld import (
    COMMITTED_TOY_ASSETS,
    TOY_CHECKPOINTS,
    build,
    committed_asset,
    committed_files,
    read_build_info,
    toy_asset,
)

MAX_ASSET_BYTES = 10_000_000
RECORDS = {"build_info.json", "SHA256SUMS", "PROVENANCE.md"}
"""Files of a committed folder that are records, not part of the artefact (not copied, not in SHA256SUMS)."""


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _current_fingerprint(name):
    inputs = {d: _current_fingerprint(d) for d in build.dependencies(name)}
    return build._fingerprint(build._spec(name, "cpu"), inputs)


@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to train a toy artefact fails the test."""
    for fn in ("_build_tokenizer", "_build_lm", "_build_vision", "_build_data"):
        monkeypatch.setattr(build, fn, lambda *a, _fn=fn, **k: pytest.fail(f"{_fn} was called: nothing may be built"))


@pytest.mark.parametrize("name", COMMITTED_TOY_ASSETS)
def test_committed_folder_matches_its_sums_and_the_current_preset(name):
    folder = committed_asset(name, "cpu")
    assert folder == TOY_CHECKPOINTS / name
    sums = committed_files(folder)
    on_disk = {p.name for p in folder.iterdir()}
    assert on_disk - RECORDS == set(sums), "every artefact file is checksummed, and only those"
    assert RECORDS <= on_disk
    for file, digest in sums.items():
        assert _sha256(folder / file) == digest, f"{name}/{file} differs from SHA256SUMS"
    assert sum((folder / f).stat().st_size for f in on_disk) <= MAX_ASSET_BYTES
    for file in sums:
        if file.endswith(".safetensors"):
            load_file(folder / file)  # real tensors, not a git-LFS pointer
    info = read_build_info(folder)
    assert info["artefact"] == name and info["preset"] == "cpu" and info["seed"] == 0
    # A change to the cpu preset's settings for this artefact must come with a re-committed build.
    assert info["fingerprint"] == _current_fingerprint(name), (
        f"committed {name} was built with other settings: rebuild it with "
        f"`python -m groundvlm.recipes.toyworld build --from-source --only {name}` and re-commit it"
    )


def test_other_presets_have_no_committed_asset():
    assert committed_asset("lm-llama", "gpu") is None and committed_asset("lm-llama", "test") is None
    assert committed_asset("lm-opt-small", "cpu") is None


def test_empty_cache_gets_the_committed_bytes(tmp_path, no_training, capsys):
    for name in ("lm-llama", "vision-dinov2"):  # lm-llama brings its tokenizer-llama
        folder = toy_asset(name, "cpu", cache_dir=tmp_path)
        assert "copying the committed build" in capsys.readouterr().out
        committed = TOY_CHECKPOINTS / name
        for file, digest in committed_files(committed).items():
            assert _sha256(folder / file) == digest
        info = read_build_info(folder)
        assert info["fingerprint"] == read_build_info(committed)["fingerprint"]
        assert info["metrics"]["source"] == "committed"
        assert info["metrics"]["final_loss"] == read_build_info(committed)["metrics"]["final_loss"]
    assert read_build_info(tmp_path / "toyworld" / "cpu" / "tokenizer-llama")["metrics"]["source"] == "committed"
    toy_asset("lm-llama", "cpu", cache_dir=tmp_path)  # and the copies are then reused
    assert "(reused" in capsys.readouterr().out


def test_toy_groma_is_built_from_the_committed_weights(tmp_path, monkeypatch, no_training):
    """What `accelerate launch recipes/groma.py` builds on a fresh clone: the committed encoder and LM's weights."""
    from groundvlm.recipes.systems.groma.models import build_toy_groma

    monkeypatch.setenv("GROUNDVLM_CACHE", str(tmp_path))
    model, processor = build_toy_groma("cpu", seed=0)
    from transformers import Dinov2Model

    state = model.vision_model.state_dict()
    # The installed transformers may rename DINOv2's attention weights on load: compare with the loaded encoder,
    # and the tensors whose names it keeps with the committed file itself.
    vision = Dinov2Model.from_pretrained(TOY_CHECKPOINTS / "vision-dinov2").state_dict()
    assert set(vision) == set(state) and all(state[k].equal(v) for k, v in vision.items())
    raw = load_file(TOY_CHECKPOINTS / "vision-dinov2" / "model.safetensors")
    kept = [k for k in raw if k in state]
    assert len(kept) >= 10 and all(state[k].equal(raw[k]) for k in kept)
    lm = load_file(TOY_CHECKPOINTS / "lm-llama" / "model.safetensors")
    embed_key = next(k for k in lm if k.endswith("embed_tokens.weight"))
    rows = lm[embed_key].shape[0]
    assert model.language_model.get_input_embeddings().weight[:rows].equal(lm[embed_key])
    layer = next(k for k in lm if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert model.language_model.state_dict()[layer].equal(lm[layer])
    tokens = json.loads((TOY_CHECKPOINTS / "lm-llama" / "tokenizer.json").read_text())["model"]["vocab"]
    assert all(processor.tokenizer.convert_tokens_to_ids(t) == i for t, i in tokens.items())


def _committed_copy(tmp_path, monkeypatch, name):
    """A writable copy of the committed folders, patched in as TOY_CHECKPOINTS."""
    root = tmp_path / "toy_checkpoints"
    for n in COMMITTED_TOY_ASSETS:
        shutil.copytree(TOY_CHECKPOINTS / n, root / n)
    monkeypatch.setattr(build, "TOY_CHECKPOINTS", root)
    return root / name


def test_a_corrupt_committed_file_is_refused(tmp_path, monkeypatch):
    folder = _committed_copy(tmp_path, monkeypatch, "tokenizer-llama")
    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="does not match .*SHA256SUMS"):
        toy_asset("tokenizer-llama", "cpu", cache_dir=tmp_path / "cache", verbose=False)


def test_stale_committed_build_and_from_source_build(tmp_path, monkeypatch, capsys):
    built = []

    def fake_tokenizer(folder, family, p):
        built.append(family)
        (folder / "tokenizer.json").write_text("{}")
        return {"vocab_size": 0}

    monkeypatch.setattr(build, "_build_tokenizer", fake_tokenizer)
    cache = tmp_path / "cache"
    # --from-source trains even though a committed build exists, and replaces a copied one in the cache.
    toy_asset("tokenizer-llama", "cpu", cache_dir=cache)
    assert built == [] and read_build_info(cache / "toyworld/cpu/tokenizer-llama")["metrics"]["source"] == "committed"
    capsys.readouterr()
    toy_asset("tokenizer-llama", "cpu", cache_dir=cache, from_source=True)
    assert built == ["llama"] and "copied from the committed build" in capsys.readouterr().out
    assert read_build_info(cache / "toyworld/cpu/tokenizer-llama")["metrics"] == {"vocab_size": 0}
    toy_asset("tokenizer-llama", "cpu", cache_dir=cache, from_source=True)  # a source build is then reused
    assert built == ["llama"]
    # A committed build made with other settings is not copied: the artefact is built, with a warning.
    folder = _committed_copy(tmp_path, monkeypatch, "tokenizer-llama")
    info = read_build_info(folder)
    (folder / "build_info.json").write_text(json.dumps({**info, "fingerprint": "old"}))
    capsys.readouterr()
    toy_asset("tokenizer-llama", "cpu", cache_dir=tmp_path / "cache2")
    assert built == ["llama", "llama"] and "made with other settings" in capsys.readouterr().out
