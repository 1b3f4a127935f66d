"""The toy world's caption-only VL-LLM (DESIGN §4): VPGTrans trained from scratch (`tfs`) on position-free captions.

    python -m groundvlm.recipes.vpgtrans_captioner --preset cpu|gpu|gpu-small [--out DIR] [--qformer_pretrain] [--frozen_lm]
        [any recipes/vpgtrans.py flag, e.g. --max_steps 3000]

Frozen toy BLIP-2 ViT (`vision-blip2`), toy OPT LM (`lm-opt-small`), Q-Former + projector trained on toy
captions that never mention positions. PIN uses it as its frozen base VLM: it must *see* (name the objects of
held-out images) but has never been taught to localise.

A probe found (a feasibility probe run before this project; its notes live outside this repo) that with the tiny toy LM frozen, generative-only caption training
learns shapes but collapses colours (name recall 0.12). Two remedies are available here:
- `unfreeze_lm` + `text_replay_weight` (the default of the captioner configs): the toy LM adapts while replaying
  its own pretraining text, so it keeps the box/number language PIN relies on (probe: recall 0.96, box parse 87%);
- `--qformer_pretrain`: BLIP-2's first stage (ITC + ITM + ITG) before the caption stage, which is how real
  BLIP-2 (and VPGTrans's starting point) is built; combine with `--frozen_lm` to keep the frozen-LM premise.

`build_caption_vlm` writes the model + processor to `<out>/model` and `<out>/captioner.json` with the metrics
(caption name recall on held-out images, target >= 0.8; raw box-parse rate) and the provenance.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import torch
import yaml

from groundvlm.recipes.common.provenance import git_commit
from groundvlm.recipes.toyworld import caption_asset_metrics

# captioner preset -> (caption-stage config, Q-Former-pretraining config, toy-asset preset). "gpu-small" trains the
# cpu-preset model sizes with the GPU budget, on toy assets of the "gpu-small" preset (same sizes, GPU-trained):
# the size that can be committed (DESIGN §4: <= 10 MB) and run on 2 CPU cores.
CONFIGS = {
    "cpu": ("captioner_cpu", "qformer_pretrain_cpu", "cpu"),
    "gpu": ("captioner_gpu", "qformer_pretrain_gpu", "gpu"),
    "gpu-small": ("captioner_gpu_small", "qformer_pretrain_gpu", "gpu-small"),
}
NAME_RECALL_TARGET = 0.8


def object_name_recall(captions: list[str], scene_objects: list[list[str]]) -> float:
    """Fraction of objects whose full name ("red star") occurs in their image's caption (lower-cased)."""
    hits = total = 0
    for caption, names in zip(captions, scene_objects):
        caption = " " + " ".join(re.sub(r"[^\w\s]", " ", caption.lower()).split()) + " "  # "star," counts
        for name in names:
            total += 1
            hits += f" {name.lower()} " in caption
    if total == 0:
        raise ValueError("object_name_recall needs at least one object.")
    return hits / total


@torch.no_grad()
def caption_checks(model, processor, n_images: int = 200, seed: int = 10_000, split: str = "all", batch_size: int = 32) -> dict:
    """Greedy captions of `n_images` toy scenes the captioner never trained on (another seed):
    name recall, plus the raw box-parse rate of PIN's prompt on each object ("In the image is a {name} located at")."""
    from groundvlm.recipes.toyworld import ToyWorld, texts
    from groundvlm.recipes.toyworld.corpus import PIN_PROMPT, grid_ticks
    from groundvlm.recipes.toyworld.lms import parse_box

    world = ToyWorld(seed=seed, split=split)
    scenes = [world.scene(i) for i in range(n_images)]
    images = [s.image.convert("RGB") for s in scenes]
    names = [[o.name for o in s.objects] for s in scenes]
    device = next(model.parameters()).device
    model.eval()
    captions, parsed, prompts_total = [], 0, 0
    ticks = grid_ticks()
    for start in range(0, n_images, batch_size):
        batch = images[start : start + batch_size]
        inputs = processor(images=batch, text=[""] * len(batch)).to(device)
        ids = model.generate(**inputs, num_beams=1, do_sample=False, max_new_tokens=30)
        captions.extend(processor.post_process_generation(ids, inputs["input_ids"]))
        prompt_images, prompts = [], []
        for image, scene_names in zip(batch, names[start : start + batch_size]):
            for name in scene_names:
                prompt_images.append(image)
                prompts.append(PIN_PROMPT.format(article=texts.article(name), name=name))
        inputs = processor(images=prompt_images, text=prompts).to(device)
        ids = model.generate(**inputs, num_beams=1, do_sample=False, max_new_tokens=16)
        for answer in processor.post_process_generation(ids, inputs["input_ids"]):
            parsed += parse_box(answer, ticks) is not None
        prompts_total += len(prompts)
    return {
        "name_recall": object_name_recall(captions, names),
        "raw_box_parse_rate": parsed / max(prompts_total, 1),
        "images": n_images,
        "split": split,
        "sample_captions": captions[:5],
        "sample_objects": names[:5],
    }


def build_caption_vlm(out_dir: str | Path, preset: str = "cpu", qformer_pretrain: bool = False, frozen_lm: bool = False,
                      extra_args: list[str] | None = None, eval_images: int | None = None) -> Path:  # fmt: skip
    """Train the caption-only toy VL-LLM into `out_dir/model` and write `out_dir/captioner.json`.

    Runs `recipes/vpgtrans.py --stage tfs --config captioner_<preset>` (and first `--stage qformer_pretrain`
    when asked). `frozen_lm` keeps the LLM frozen (the VPGTrans premise; expect colours to collapse without the
    Q-Former pretraining). Returns the model folder.
    """
    from groundvlm.recipes import vpgtrans

    if preset not in CONFIGS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {tuple(CONFIGS)}")
    out_dir = Path(out_dir)
    extra = list(extra_args or [])
    eval_images = eval_images or (100 if preset == "cpu" else 200)
    start = time.time()
    config, qformer_config, asset_preset = CONFIGS[preset]
    tfs_args = ["--stage", "tfs", "--config", config, "--output_dir", str(out_dir / "tfs"), "--preset", asset_preset]
    if qformer_pretrain:
        qf_dir = out_dir / "qformer_pretrain"
        qf_args = ["--stage", "qformer_pretrain", "--config", qformer_config, "--output_dir", str(qf_dir), "--preset", asset_preset]
        if preset == "gpu-small":
            qf_args += ["--qformer_hidden_size", "128"]
        vpgtrans.main(qf_args + extra)
        tfs_args += ["--qformer_init", str(qf_dir / vpgtrans.QFORMER_WEIGHTS_NAME)]
    if frozen_lm:
        tfs_args += ["--unfreeze_lm", "false", "--text_replay_weight", "0"]
    model, processor, train_metrics = vpgtrans.main(tfs_args + extra)
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    seconds = time.time() - start
    checks = {"held_out_images": caption_checks(model, processor, eval_images, split="all"),
              "held_out_categories": caption_checks(model, processor, max(eval_images // 2, 1), split="held_out")}  # fmt: skip
    report = {
        "command": f"python -m groundvlm.recipes.vpgtrans_captioner --preset {preset}"
        + (" --qformer_pretrain" if qformer_pretrain else "") + (" --frozen_lm" if frozen_lm else ""),
        "commit": git_commit(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "seed": yaml.safe_load((out_dir / "tfs" / "config.yaml").read_text(encoding="utf-8"))["seed"],
        "seconds": round(seconds, 1),
        "train": train_metrics,
        "checks": checks,
        "meets_target": checks["held_out_images"]["name_recall"] >= NAME_RECALL_TARGET,
    }
    (out_dir / "captioner.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return model_dir


def build_caption_asset(folder: str | Path, preset: str) -> dict:
    """Train a caption VL-LLM into the toy-asset folder `folder` (model + processor files at its top level) and
    return the metrics of its build record: the `builder` of `toy_asset("vlm-caption", preset)`.

    Trains with `build_caption_vlm` in `folder/_build` and moves the model up."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "_build"
    model_dir = build_caption_vlm(work, preset)
    report = json.loads((work / "captioner.json").read_text())
    for item in model_dir.iterdir():
        shutil.move(str(item), folder / item.name)
    shutil.copy(work / "captioner.json", folder / "captioner.json")
    shutil.rmtree(work)
    return caption_asset_metrics(report, "built")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--out", default=None, help="default runs/vpgtrans/captioner_<preset>")
    parser.add_argument("--qformer_pretrain", action="store_true")
    parser.add_argument("--frozen_lm", action="store_true")
    parser.add_argument("--eval_images", type=int, default=None, help="images for the checks (default 100 cpu, 200 gpu)")
    args, extra = parser.parse_known_args(argv)
    out = args.out or f"runs/vpgtrans/captioner_{args.preset}"
    build_caption_vlm(out, args.preset, args.qformer_pretrain, args.frozen_lm, extra, args.eval_images)
    report = json.loads((Path(out) / "captioner.json").read_text())
    print(json.dumps({k: report[k] for k in ("seconds", "checks", "meets_target")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
