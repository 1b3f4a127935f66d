"""Build and cache the toy world's base models: the embedded default every recipe runs on.

    python -m groundvlm.recipes.toyworld build                 # what the main job needs (CPU preset)
    python -m groundvlm.recipes.toyworld build --preset gpu --only all
    python -m groundvlm.recipes.toyworld build --only lm-llama vision-dinov2
    python -m groundvlm.recipes.toyworld build --only lm-llama vision-dinov2 --from-source   # train, don't copy
    python -m groundvlm.recipes.toyworld list

Artefacts live under `$GROUNDVLM_CACHE` (default ~/.cache/groundvlm) as `toyworld/<preset>/<artefact>/`:

| artefact                                   | what                                    | stands in for            |
|--------------------------------------------|-----------------------------------------|--------------------------|
| data                                       | COCO json + images per split (a sample) | COCO / LVIS              |
| tokenizer-{opt,llama,t5}                   | trained fast tokenizers (AutoTokenizer) | OPT / LLaMA / T5 tokens  |
| lm-{opt-small,opt-base,llama}, lm-t5       | Auto{CausalLM,Seq2SeqLM} checkpoints    | OPT 2.7B/6.7B, Vicuna, Flan-T5 |
| vision-{blip2,clip,dinov2}                 | vision encoder + its image processor    | EVA ViT-g, CLIP ViT-L, DINOv2 |

Each folder ends with `build_info.json` (seed, preset, seconds, metrics, versions, command), written last:
a folder without it is an interrupted build and is redone; one whose recorded fingerprint (preset
parameters + the fingerprints of what it was built from) differs from the current one is rebuilt. Recipes
call `toy_asset(name, preset)`, which builds what is missing (dependencies first) and returns the folder.

Committed artefacts (cpu preset): `recipes/toy_checkpoints/<name>/` holds vlm-caption (trained by the VPGTrans
captioner) and Groma's tokenizer-llama, lm-llama and vision-dinov2 (`COMMITTED_TOY_ASSETS`, built by this module,
with their `build_info.json` and a `SHA256SUMS`). The cpu preset copies them into the cache instead of building:
a Groma CPU default on a fresh clone trains no base model. A committed artefact is copied only when its recorded
fingerprint is the current one (else it is built, with a warning), and each copied file is checked against
`SHA256SUMS`; `build --from-source` (`toy_asset(..., from_source=True)`) trains them as before.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .lms import LM_FAMILY, LM_NAMES, LMSize
from .tokenizers import FAMILIES
from .vision import VISION_KINDS

SEED = 0

ARTEFACTS = (
    ("data",)
    + tuple(f"tokenizer-{f}" for f in FAMILIES)
    + tuple(f"lm-{n}" for n in LM_NAMES)
    + tuple(f"vision-{k}" for k in VISION_KINDS)
    # The BLIP-2-shaped ViT again, its position embeddings started at 2-D sine-cosine values, so that its output
    # tokens keep saying where they are, as a real ViT's do (toyworld.vision.vision_model).
    + ("vision-blip2-pos",)
    # The caption-only VL-LLM (VPGTrans trained from scratch on position-free captions) that PIN runs on. The cpu
    # preset copies the committed GPU-built checkpoint (recipes/toy_checkpoints/vlm-caption).
    + ("vlm-caption",)
)
TOY_CHECKPOINTS = Path(__file__).resolve().parent.parent / "toy_checkpoints"
"""recipes/toy_checkpoints: the committed toy artefacts of the cpu preset, one folder each."""
COMMITTED_CAPTION_VLM = TOY_CHECKPOINTS / "vlm-caption"
"""The committed caption VL-LLM (GPU-built with the cpu preset's sizes, 9.4 MB, with its `captioner.json`), so the
CPU default starts from it instead of a weak 8-minute CPU build."""
COMMITTED_TOY_ASSETS = ("tokenizer-llama", "lm-llama", "vision-dinov2")
"""Artefacts this module builds whose cpu-preset build is committed under `TOY_CHECKPOINTS/<name>/` (build_info.json
+ SHA256SUMS + PROVENANCE.md): Groma's base models, 7 MB together, which took ~28 min to build on 2 shared cores."""

Builder = Callable[[Path, str], dict]
"""`builder(folder, preset) -> metrics`: fills `folder` with an artefact toyworld does not train itself."""

ARTEFACT_HELP = {
    "data": "toy world scenes and their texts (captions, VQA, referring expressions, boxes)",
    "tokenizer-opt": "toy tokenizer with OPT's special-token conventions",
    "tokenizer-llama": "toy tokenizer with LLaMA's special-token conventions (cpu: committed)",
    "tokenizer-t5": "toy tokenizer with T5's special-token conventions",
    "lm-opt-small": "OPT-style toy LM, stand-in for OPT-2.7B (VPGTrans' source LLM)",
    "lm-opt-base": "larger OPT-style toy LM, stand-in for OPT-6.7B (VPGTrans' target LLM)",
    "lm-llama": "Llama-style toy LM, stand-in for Vicuna / LLaMA-7B (Groma's LLM; cpu: committed)",
    "lm-t5": "T5-style toy LM, stand-in for Flan-T5",
    "vision-blip2": "toy vision encoder shaped as BLIP-2's EVA ViT",
    "vision-blip2-pos": "the same with sine-cosine-initialised positions: its tokens keep their position, as a real ViT's",
    "vision-clip": "toy vision encoder shaped as CLIP ViT-L/14 (LLaVA)",
    "vision-dinov2": "toy vision encoder shaped as DINOv2 (Groma; cpu: committed)",
    "vlm-caption": "the caption-only toy VL-LLM PIN runs on (cpu: copied from recipes/toy_checkpoints/)",
}
"""One line per artefact for `toyworld list`."""

LIST_LEGEND = "\n".join(
    [
        "legend:",
        '  state: "built (N s) key=value ..." = in the cache, with its build time and the build\'s own checks;',
        '         "-" = not built yet: a recipe builds it on first use, or run',
        "         python -m groundvlm.recipes.toyworld build --only NAME [--preset PRESET]",
        "  presets: cpu = sizes for 2 CPU cores; gpu = larger, built on a GPU; gpu-small = cpu sizes built on a GPU",
        f"  committed: the cpu preset copies {' '.join(COMMITTED_TOY_ASSETS)} vlm-caption from recipes/toy_checkpoints/",
        "         (build --from-source trains all but vlm-caption, which the VPGTrans captioner trains)",
        *(f"  {name:<16} {ARTEFACT_HELP[name]}" for name in ARTEFACTS),
    ]
)

# What the main job (PIN on a BLIP-2-style OPT VLM) needs; the default of `build`.
MAIN_ARTEFACTS = ("data", "tokenizer-opt", "lm-opt-small", "vision-blip2")
# Vision artefact -> (encoder kind, position-embedding init); see toyworld.vision.vision_model.
VISION_ARTEFACTS = {f"vision-{k}": (k, "learned") for k in VISION_KINDS} | {"vision-blip2-pos": ("blip2", "sincos")}


@dataclass(frozen=True)
class Preset:
    """Sizes and budgets of one preset. Budgets are in steps (not seconds) so builds are reproducible."""

    device: str
    bf16: bool
    data_scenes_per_split: int
    corpus_scenes: int
    lm_sizes: dict = field(default_factory=dict)
    lm_steps: int = 300
    lm_batch: int = 64
    lm_lr: float = 2e-3
    lm_eval_texts: int = 256
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_images: int = 3000
    vision_steps: int = 300
    vision_batch: int = 32
    vision_lr: float = 3e-3
    vision_eval_images: int = 256
    render_workers: int = 1


PRESETS = {
    # 2 CPU cores: the default build (data + OPT tokenizer + opt-small + blip2) must finish in < 10 min.
    "cpu": Preset(
        device="cpu",
        bf16=False,
        data_scenes_per_split=200,
        corpus_scenes=1000,
        lm_sizes={
            "opt-small": LMSize(128, 4, 4),
            "opt-base": LMSize(256, 4, 4),
            "llama": LMSize(128, 4, 4),
            "t5": LMSize(128, 2, 4),
        },
        lm_steps=300,
        lm_batch=64,
        lm_lr=2e-3,
        vision_images=3000,
        vision_steps=300,
        vision_batch=32,
    ),
    # One accelerator (sizes tried on an H200): bigger models, more steps, bf16.
    "gpu": Preset(
        device="cuda",
        bf16=True,
        data_scenes_per_split=500,
        corpus_scenes=10000,
        lm_sizes={
            "opt-small": LMSize(256, 4, 4),
            "opt-base": LMSize(512, 6, 8),
            "llama": LMSize(256, 4, 4),
            "t5": LMSize(256, 4, 4),
        },
        lm_steps=3000,
        lm_batch=256,
        lm_lr=1e-3,
        lm_eval_texts=1024,
        vision_hidden=256,
        vision_layers=6,
        vision_heads=4,
        vision_images=60000,
        vision_steps=3000,
        vision_batch=256,
        vision_lr=2e-3,
        vision_eval_images=1024,
        render_workers=min(16, os.cpu_count() or 1),
    ),
    # Seconds-sized builds for tests: same code paths, tiny models and a handful of steps.
    "test": Preset(
        device="cpu",
        bf16=False,
        data_scenes_per_split=3,
        corpus_scenes=40,
        lm_sizes={n: LMSize(32, 1, 2) for n in LM_NAMES},
        lm_steps=4,
        lm_batch=8,
        lm_eval_texts=16,
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        vision_images=24,
        vision_steps=4,
        vision_batch=8,
        vision_eval_images=8,
    ),
}


# The cpu preset's model sizes trained with the GPU budget: small enough to commit (<= 10 MB of safetensors) and to run
# on 2 CPU cores, trained long enough to see. The committed caption VL-LLM is built from these.
PRESETS["gpu-small"] = replace(
    PRESETS["cpu"],
    device="cuda",
    bf16=True,
    corpus_scenes=PRESETS["gpu"].corpus_scenes,
    lm_steps=PRESETS["gpu"].lm_steps,
    lm_batch=PRESETS["gpu"].lm_batch,
    lm_eval_texts=PRESETS["gpu"].lm_eval_texts,
    vision_images=PRESETS["gpu"].vision_images,
    vision_steps=PRESETS["gpu"].vision_steps,
    vision_batch=PRESETS["gpu"].vision_batch,
    vision_lr=PRESETS["gpu"].vision_lr,
    vision_eval_images=PRESETS["gpu"].vision_eval_images,
    render_workers=PRESETS["gpu"].render_workers,
)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$GROUNDVLM_CACHE`, else ~/.cache/groundvlm."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("GROUNDVLM_CACHE", Path.home() / ".cache" / "groundvlm")).expanduser()


def dependencies(name: str) -> tuple[str, ...]:
    """Artefacts `name` is built from (an LM needs its family's tokenizer)."""
    if name.startswith("lm-"):
        return (f"tokenizer-{LM_FAMILY[name[3:]]}",)
    return ()


def _check(name: str, preset: str) -> None:
    if name not in ARTEFACTS:
        raise ValueError(f"unknown toy artefact {name!r}; expected one of {ARTEFACTS}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(PRESETS)}")


def _spec(name: str, preset: str) -> dict:
    """The preset parameters that determine artefact `name` (part of its fingerprint)."""
    p = PRESETS[preset]
    spec = {"artefact": name, "seed": SEED, "format": 1}
    if name == "data":
        spec["scenes_per_split"] = p.data_scenes_per_split
    elif name.startswith("tokenizer-"):
        spec["corpus_scenes"] = p.corpus_scenes
    elif name == "vlm-caption":
        committed = COMMITTED_CAPTION_VLM / "captioner.json"
        spec["committed"] = hashlib.sha256(committed.read_bytes()).hexdigest()[:16] if committed.is_file() else None
    elif name.startswith("lm-"):
        lm = name[3:]
        spec.update(
            corpus_scenes=p.corpus_scenes,
            size=asdict(p.lm_sizes[lm]),
            steps=p.lm_steps,
            batch=p.lm_batch,
            lr=p.lm_lr,
            bf16=p.bf16,
        )
    else:
        spec.update(
            hidden=p.vision_hidden,
            layers=p.vision_layers,
            heads=p.vision_heads,
            images=p.vision_images,
            steps=p.vision_steps,
            batch=p.vision_batch,
            lr=p.vision_lr,
            bf16=p.bf16,
        )
        if VISION_ARTEFACTS[name][1] != "learned":  # (the learned init's fingerprints predate this field)
            spec["position_init"] = VISION_ARTEFACTS[name][1]
    return spec


def _fingerprint(spec: dict, inputs: dict) -> str:
    blob = json.dumps({"spec": spec, "inputs": inputs}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_build_info(folder: Path) -> dict | None:
    """The folder's build_info.json, or None when the build is missing or was interrupted."""
    path = Path(folder) / "build_info.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock so that processes of one launch (e.g. DDP ranks) build an artefact once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; builds are still atomic through build_info.json
        yield
        return
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # say so: a silent wait looks like a hung launch
            print(f"[toyworld] another process holds {path}; waiting for it", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def lm_corpus_memo(n_scenes: int, seed: int) -> list[str]:
    """The LM corpus (`corpus.lm_corpus`), memoised per process: the tokenizers and every LM of one build, and the
    VPGTrans captioner's text replay, share it."""
    from .corpus import lm_corpus

    key = (n_scenes, seed)
    if key not in _CORPUS_MEMO:
        _CORPUS_MEMO[key] = lm_corpus(n_scenes, seed=seed)
    return _CORPUS_MEMO[key]


_CORPUS_MEMO: dict = {}


def _curve(losses: list[float], points: int = 20) -> list[list]:
    """[step, mean loss of the window ending there] at about `points` evenly spaced steps."""
    every = max(1, len(losses) // points)
    return [
        [i + every, round(sum(losses[i : i + every]) / len(losses[i : i + every]), 4)]
        for i in range(0, len(losses), every)
    ]


def _build_data(folder: Path, p: Preset) -> dict:
    """A sample COCO export (json + images) of each split, so a user can look at the toy world."""
    from tqdm.auto import tqdm

    from . import export
    from .world import ToyWorld

    metrics = {}
    for split in tqdm(("train", "validation", "held_out"), desc="data export", unit="split"):
        world = ToyWorld(seed=SEED, split=split)
        export.to_coco(world, range(p.data_scenes_per_split), folder / split)
        metrics[f"{split}_images"] = p.data_scenes_per_split
    return metrics


def _build_tokenizer(folder: Path, family: str, p: Preset) -> dict:
    from groundvlm.processing.processing_pin import pin_prompt

    from .corpus import box_codec
    from .tokenizers import train_tokenizer

    corpus = lm_corpus_memo(p.corpus_scenes, SEED)
    tok = train_tokenizer(family, corpus)
    tok.save_pretrained(folder)
    ticks = box_codec().ticks
    whole = sum(len(tok(t, add_special_tokens=False).input_ids) == 1 for t in ticks)
    lengths = [len(tok(t).input_ids) for t in corpus[:2000]]
    return {
        "vocab_size": len(tok),
        "corpus_texts": len(corpus),
        "ticks_as_one_token": f"{whole}/{len(ticks)}",
        "mean_tokens_per_text": round(sum(lengths) / len(lengths), 2),
        "example": " ".join(tok.convert_ids_to_tokens(tok(pin_prompt("red star") + " [14,28,70,112]").input_ids)),
    }


def _build_lm(folder: Path, lm: str, tokenizer_dir: Path, p: Preset) -> dict:
    import torch
    from transformers import AutoTokenizer

    from groundvlm.processing.processing_pin import pin_prompt

    from .corpus import VQA_FORMATS, box_codec
    from .lms import LM_FAMILY, box_syntax_rate, evaluate_lm, lm_model, pretrain_lm
    from .world import ToyWorld

    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    corpus = lm_corpus_memo(p.corpus_scenes, SEED)
    model = lm_model(lm, tok, p.lm_sizes[lm])
    train = pretrain_lm(
        lm,
        model,
        tok,
        corpus,
        steps=p.lm_steps,
        batch_size=p.lm_batch,
        lr=p.lm_lr,
        seed=SEED,
        device=p.device,
        bf16=p.bf16,
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)

    # Held-out text: scenes of another seed. VQA in this family's prompt format (the VPGTrans reference's VQA prompts).
    held = lm_corpus_memo(max(1, p.lm_eval_texts // 8), SEED + 1)
    marker = VQA_FORMATS[1 if LM_FAMILY[lm] == "t5" else 0].split("{a}")[0].split("{q}")[1]
    vqa = [t for t in held if t.startswith("Question:") and marker in t][: p.lm_eval_texts]
    names = ToyWorld(seed=SEED, split="all").categories
    prompts = [pin_prompt(n) for n in names][:32]
    return {
        "parameters": sum(t.numel() for t in model.parameters()),
        "first_loss": round(train["losses"][0], 4),
        "final_loss": round(train["final_loss"], 4),
        "loss_curve": _curve(train["losses"]),
        "eval_loss": round(evaluate_lm(lm, model, tok, held[: p.lm_eval_texts], device=p.device)["loss"], 4),
        "vqa_next_token_accuracy": round(evaluate_lm(lm, model, tok, vqa, device=p.device)["next_token_accuracy"], 4),
        "box_syntax_rate": round(box_syntax_rate(lm, model, tok, prompts, box_codec(), device=p.device), 4),
    }


def _build_vision(folder: Path, kind: str, p: Preset, position_init: str = "learned") -> dict:
    import torch
    from safetensors.torch import save_file

    from .vision import (
        image_processor,
        label_names,
        name_recall,
        normalise,
        pretrain_vision,
        probe_predictions,
        render_scenes,
        scene_labels,
        token_position_r2,
        vision_model,
    )
    from .world import ToyWorld

    torch.manual_seed(SEED)
    world = ToyWorld(seed=SEED, split="all")
    labels = label_names(world.categories)
    images, objects = render_scenes(world, range(p.vision_images), workers=p.render_workers)
    targets = scene_labels(objects, labels)
    model = vision_model(kind, p.vision_hidden, p.vision_layers, p.vision_heads, position_init)
    head, train = pretrain_vision(
        kind,
        model,
        images,
        targets,
        steps=p.vision_steps,
        batch_size=p.vision_batch,
        lr=p.vision_lr,
        seed=SEED,
        device=p.device,
        bf16=p.bf16,
    )
    model.save_pretrained(folder)
    image_processor(kind).save_pretrained(folder)
    # The probe head is kept beside the encoder (not part of it) to check "does it see" later.
    save_file(
        {"weight": head.weight.detach().cpu(), "bias": head.bias.detach().cpu()}, str(folder / "probe_head.safetensors")
    )
    (folder / "probe_labels.json").write_text(json.dumps(labels, indent=1) + "\n")

    metrics = {
        "parameters": sum(t.numel() for t in model.parameters()),
        "final_loss": round(train["final_loss"], 4),
        "loss_curve": _curve(train["losses"]),
    }
    for split in ("held_out", "validation"):
        # Scenes of a seed the encoder was not trained on.
        eval_world = ToyWorld(seed=SEED + 1, split=split)
        ev_images, ev_objects = render_scenes(eval_world, range(p.vision_eval_images), workers=p.render_workers)
        probs = probe_predictions(kind, model, head, ev_images, device=p.device)
        for k, v in name_recall(probs, ev_objects, labels).items():
            metrics[f"{split}_{k}"] = round(v, 4)
    # Do the output tokens still say where they are (a real ViT's do)? On held-out scenes.
    model.float().to("cpu")
    metrics["token_position_r2"] = token_position_r2(model, normalise(kind, ev_images[:32]))
    return metrics


def caption_asset_metrics(report: dict, source: str) -> dict:
    """The build record of a caption VL-LLM asset from its `captioner.json` report; `source`: committed | built."""
    checks = report["checks"]
    return {
        "source": source,
        "name_recall_held_out_images": checks["held_out_images"]["name_recall"],
        "name_recall_held_out_categories": checks["held_out_categories"]["name_recall"],
        "raw_box_parse_rate": checks["held_out_images"]["raw_box_parse_rate"],
        # Box loss behind the image prefix / text only (absent in reports written before this check existed).
        "box_loss_ratio": checks.get("box_loss", {}).get("ratio"),
        "meets_target": report["meets_target"],
    }


def committed_asset(name: str, preset: str) -> Path | None:
    """The committed folder of toyworld-built artefact `name` (see `COMMITTED_TOY_ASSETS`) for `preset`, or None."""
    folder = TOY_CHECKPOINTS / name
    if preset != "cpu" or name not in COMMITTED_TOY_ASSETS or not (folder / "SHA256SUMS").is_file():
        return None
    return folder


def committed_files(folder: Path) -> dict[str, str]:
    """{file name: sha256} of a committed artefact, from its `SHA256SUMS` (`sha256sum` format)."""
    sums = {}
    for line in (Path(folder) / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, file = line.split(maxsplit=1)
            sums[file.lstrip("*")] = digest
    return sums


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_checked(name: str, source: Path, folder: Path) -> None:
    """Copy the files `SHA256SUMS` lists from committed `source` into `folder`, checking each copy's sha256."""
    if not (source / "SHA256SUMS").is_file():
        raise FileNotFoundError(f"committed toy asset {name} at {source} has no SHA256SUMS listing its files")
    for file, digest in committed_files(source).items():
        shutil.copy2(source / file, folder / file)
        if _sha256(folder / file) != digest:
            raise RuntimeError(
                f"committed toy asset {name}: {file} does not match {source / 'SHA256SUMS'} (corrupt checkout or a "
                "git LFS pointer?); rebuild it with `python -m groundvlm.recipes.toyworld build --from-source "
                f"--only {name}`"
            )


def _copy_committed(name: str, source: Path, folder: Path) -> dict:
    """`_copy_checked`; the metrics are the committed build's, with source=committed and its build time."""
    _copy_checked(name, source, folder)
    record = read_build_info(source)
    return {"source": "committed", "built_in_seconds": record["seconds"], **record["metrics"]}


def _build(
    name: str,
    preset: str,
    folder: Path,
    deps: dict[str, Path],
    builder: Builder | None = None,
    fingerprint: str | None = None,
    from_source: bool = False,
    verbose: bool = True,
) -> dict:
    """Build artefact `name` into the empty `folder` (or copy its committed build whose recorded fingerprint is
    `fingerprint`, unless `from_source`); returns its metrics."""
    p = PRESETS[preset]
    committed = None if from_source else committed_asset(name, preset)
    if committed is not None:
        record = read_build_info(committed) or {}
        if record.get("fingerprint") == fingerprint:
            return _copy_committed(name, committed, folder)
        if verbose:
            print(
                f"[toyworld] {name}: the committed build at {committed} was made with other settings "
                f"(fingerprint {record.get('fingerprint')} != {fingerprint}); building from source"
            )
    if name == "data":
        return _build_data(folder, p)
    if name.startswith("tokenizer-"):
        return _build_tokenizer(folder, name.split("-", 1)[1], p)
    if name.startswith("lm-"):
        return _build_lm(folder, name[3:], deps[dependencies(name)[0]], p)
    if name == "vlm-caption":
        if preset == "cpu" and (COMMITTED_CAPTION_VLM / "captioner.json").is_file():
            _copy_checked(name, COMMITTED_CAPTION_VLM, folder)
            return caption_asset_metrics(
                json.loads((COMMITTED_CAPTION_VLM / "captioner.json").read_text()), "committed"
            )
        if builder is None:
            raise FileNotFoundError(
                f"toy asset 'vlm-caption' of the {preset} preset is not committed; the VPGTrans captioner builds it "
                f"(python -m groundvlm.recipes.systems.vpgtrans.captioner --preset {preset}), or pass its "
                "`build_caption_asset` as toy_asset(..., builder=...)"
            )
        return builder(folder, preset)
    kind, position_init = VISION_ARTEFACTS[name]
    return _build_vision(folder, kind, p, position_init)


def toy_asset(
    name: str,
    preset: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    *,
    verbose: bool = True,
    builder: Builder | None = None,
    from_source: bool = False,
) -> Path:
    """The folder of toy artefact `name` (see ARTEFACTS) for `preset`, building it (and its inputs) if needed.

    `vlm-caption` is a model a system recipe trains: the cpu preset copies the committed checkpoint
    (`COMMITTED_CAPTION_VLM`); other presets need `builder(folder, preset) -> metrics` (the VPGTrans captioner's
    `build_caption_asset`). The cpu preset's `COMMITTED_TOY_ASSETS` are copied from `TOY_CHECKPOINTS`;
    `from_source=True` builds them (and their inputs) instead, replacing a copied one in the cache.

    Loadable with the ordinary classes: `AutoTokenizer` for tokenizer-*, `AutoModelForCausalLM` (or
    `AutoModelForSeq2SeqLM` for lm-t5) + `AutoTokenizer` for lm-*, `AutoImageProcessor` + `AutoModel`
    for vision-clip/-dinov2 and `Blip2VisionModel` for vision-blip2 (AutoModel has no entry for
    Blip2VisionConfig); data/ holds `<split>/annotations.json` + `<split>/images/`.
    """
    return _ensure(name, preset, cache_dir, verbose, builder=builder, from_source=from_source)[0]


def _ensure(
    name: str,
    preset: str,
    cache_dir,
    verbose: bool,
    is_dependency: bool = False,
    builder: Builder | None = None,
    from_source: bool = False,
) -> tuple[Path, dict, bool]:
    """(folder, build_info, reused?) for `name`, building dependencies first (silent when they are cached)."""
    _check(name, preset)
    deps = {
        d: _ensure(d, preset, cache_dir, verbose, is_dependency=True, from_source=from_source)
        for d in dependencies(name)
    }
    folder = cache_root(cache_dir) / "toyworld" / preset / name
    spec = _spec(name, preset)
    inputs = {d: info["fingerprint"] for d, (_, info, _) in deps.items()}
    fingerprint = _fingerprint(spec, inputs)
    with _lock(folder.parent / f".{name}.lock"):
        info = read_build_info(folder)
        copied = (
            name in COMMITTED_TOY_ASSETS and info is not None and info.get("metrics", {}).get("source") == "committed"
        )
        if info is not None and info.get("fingerprint") == fingerprint and not (from_source and copied):
            if verbose and not is_dependency:
                print(f"[toyworld] {name}: cached at {folder} (reused, built in {info['seconds']:.0f} s)")
            return folder, info, True
        if folder.exists():
            why = (
                "interrupted build"
                if info is None
                else "copied from the committed build"
                if info.get("fingerprint") == fingerprint
                else "built with other settings"
            )
            if verbose:
                print(f"[toyworld] {name}: {why} at {folder}; rebuilding")
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        committed = None if from_source else committed_asset(name, preset)
        if verbose:
            how = f"copying the committed build from {committed}" if committed else f"building ({preset} preset)"
            print(f"[toyworld] {name}: {how} into {folder}")
        start, cpu_start = time.time(), time.process_time()
        deps_folders = {d: f for d, (f, _, _) in deps.items()}
        metrics = _build(name, preset, folder, deps_folders, builder, fingerprint, from_source, verbose)
        info = {
            "artefact": name,
            "preset": preset,
            "seed": SEED,
            "seconds": round(time.time() - start, 2),
            # CPU time of this process: comparable across machines that are busy with other work.
            "cpu_seconds": round(time.process_time() - cpu_start, 2),
            "metrics": metrics,
            "spec": spec,
            "inputs": inputs,
            "fingerprint": fingerprint,
            "versions": _versions(),
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # Written last and atomically: its presence is what marks the build as complete.
        tmp = folder / "build_info.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(folder / "build_info.json")
        return folder, info, False


def _resolve_only(only: list[str] | None) -> list[str]:
    if not only:
        return list(MAIN_ARTEFACTS)
    if "all" in only:
        return list(ARTEFACTS)
    unknown = [o for o in only if o not in ARTEFACTS]
    if unknown:
        raise SystemExit(f"unknown artefact(s) {unknown}; choose from: all {' '.join(ARTEFACTS)}")
    return list(dict.fromkeys(only))


def _format_metrics(metrics: dict) -> str:
    shown = []
    for k, v in metrics.items():
        if isinstance(v, float):
            shown.append(f"{k}={v:.3g}")
        elif isinstance(v, (int, str)):
            shown.append(f"{k}={v}")
    return ", ".join(shown)


def _table(rows: list[tuple[str, Path, dict, bool]]) -> str:
    lines = [f"{'artefact':<16} {'status':<8} {'seconds':>8}  metrics", "-" * 100]
    for name, folder, info, reused in rows:
        status = "cached" if reused else "copied" if info["metrics"].get("source") == "committed" else "built"
        lines.append(f"{name:<16} {status:<8} {info['seconds']:>8.1f}  {_format_metrics(info['metrics'])}")
        lines.append(f"{'':<16} -> {folder}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groundvlm.recipes.toyworld", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) toy artefacts and print where they are")
    build.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    build.add_argument("--only", nargs="+", metavar="ARTEFACT", help=f"'all' or some of: {' '.join(ARTEFACTS)}")
    build.add_argument("--cache-dir", default=None, help="default: $GROUNDVLM_CACHE or ~/.cache/groundvlm")
    build.add_argument(
        "--from-source",
        action="store_true",
        help=f"train the committed cpu artefacts ({' '.join(COMMITTED_TOY_ASSETS)}) instead of copying them",
    )
    lst = sub.add_parser("list", help="list the artefacts and which are built")
    lst.add_argument("--preset", choices=sorted(PRESETS), default=None)
    lst.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)

    if args.command == "list":
        root = cache_root(args.cache_dir) / "toyworld"
        print(f"toy artefacts under {root} (default build: {' '.join(MAIN_ARTEFACTS)})")
        print(f"  {'preset':<5} {'artefact':<16} state")
        for preset in [args.preset] if args.preset else sorted(PRESETS):
            for name in ARTEFACTS:
                info = read_build_info(root / preset / name)
                state = f"built ({info['seconds']:.0f} s) {_format_metrics(info['metrics'])}" if info else "-"
                print(f"  {preset:<5} {name:<16} {state}")
        print(LIST_LEGEND)
        return 0

    if PRESETS[args.preset].device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--preset {args.preset} needs a CUDA device; use --preset cpu here")
    names = _resolve_only(args.only)
    start = time.time()
    rows = []
    for name in names:
        folder, info, reused = _ensure(name, args.preset, args.cache_dir, verbose=True, from_source=args.from_source)
        rows.append((name, folder, info, reused))
    print()
    print(_table(rows))
    print(f"\ntotal {time.time() - start:.1f} s; cache: {cache_root(args.cache_dir) / 'toyworld' / args.preset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
