"""Train Groma in its three stages (paper §4.2; FoundationVision/groma scripts/*.sh) and evaluate it.

    accelerate launch recipes/groma.py                          # toy default: all stages + eval, 2 CPU cores
    accelerate launch recipes/groma.py --preset gpu             # the same with recipes/groma/toy_gpu_*.yaml
    accelerate launch recipes/groma.py --stage det --config toy_cpu_det        # one stage (align, instruct, eval)
    accelerate launch recipes/groma.py --stage det --config paper_det --vision_model DINOV2_L --llm VICUNA ...

Stages (each trains into <output_dir>/<stage>/, resumes there, and saves <output_dir>/<stage>/final):
    det       proposer pretraining: class-agnostic boxes, Hungarian matching + focal / L1 / GIoU losses, both
              objectness heads (single-source batches), DINOv2 frozen
    align     projector + region encoder + the added tokens' rows; LLM frozen; image captions, grounded captions,
              region captions and REC (the `default` template: no `</s>`)
    instruct  the LLM trained too (full, or --use_lora true); trl's SFTTrainer, loss on assistant turns only
    eval      REC acc@0.5, proposer AR / recall@100, grounded-caption phrase->box F1@0.5 and AR@100, region-caption
              CIDEr / METEOR (Java), LVIS-Ground AR with --lvis_annotations
`--stage all` (the default) runs det, align, instruct with `<preset>` configs (toy_cpu_* / toy_gpu_*), then eval;
other flags apply to every stage. Real data: see `recipes/systems/groma/arguments.py` (RefCOCO, Flickr30k
Entities, Visual Genome, LVIS, LLaVA / Groma-Instruct) and the paper_* configs.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from transformers import set_seed

from groundvlm.recipes.common.arguments import RunArguments, flag_value, parse_recipe_args, run_recipe, without_flag
from groundvlm.recipes.common.run_dir import prepare_run_dir, write_metrics
from groundvlm.recipes.systems.groma.arguments import GromaArguments, GromaTrainingArguments
from groundvlm.recipes.systems.groma.models import load_groma
from groundvlm.recipes.systems.groma.stages import eval_sets, run_eval, run_training_stage, stage_dir

logger = logging.getLogger("groundvlm")
STAGES = ("det", "align", "instruct")


def parse(argv: list[str]):
    return parse_recipe_args((RunArguments, GromaArguments, GromaTrainingArguments), argv=argv, recipe="groma")


def run_stage(argv: list[str]) -> dict:
    """One stage (det / align / instruct / eval) with its own arguments."""
    run_args, args, training_args = parse(argv)
    run_dir = prepare_run_dir(training_args.output_dir, run_args, args, training_args)
    set_seed(training_args.seed)
    if args.stage == "eval":
        model, processor = load_groma(args.model_name_or_path or stage_dir(run_dir, "instruct") / "final")
        start = time.perf_counter()
        metrics = run_eval(args, model, processor, eval_sets(args), training_args.device)
        metrics["eval_seconds"] = time.perf_counter() - start
        name = "eval"
    else:
        metrics = run_training_stage(
            args.stage, args, training_args, run_dir, run_args.preset, run_args.resume, run_args.max_train_minutes
        )
        name = args.stage
    write_metrics(run_dir, name, metrics)
    print(json.dumps({name: metrics}, indent=1))
    logger.info("%s results: %s", name, json.dumps(metrics))  # train.log keeps them with the run
    return metrics


def run_all(argv: list[str]) -> dict:
    """The three stages with the preset's configs, then eval (and the frozen-LLM ablation if asked)."""
    preset = flag_value(argv, "--preset", "cpu")
    prefix = {"cpu": "toy_cpu", "gpu": "toy_gpu", "gpu-small": "toy_cpu"}[preset]
    rest = without_flag(without_flag(argv, "--stage"), "--config")
    output_dir = flag_value(rest, "--output_dir", f"runs/groma/{prefix}")
    rest = without_flag(rest, "--output_dir") + ["--output_dir", output_dir]
    start, results = time.perf_counter(), {}
    for stage in STAGES:
        results[stage] = run_stage(["--config", f"{prefix}_{stage}", "--stage", stage, *rest])
    results["eval"] = run_stage(["--config", f"{prefix}_eval", "--stage", "eval", *rest])
    _, args, _ = parse(["--config", f"{prefix}_eval", *rest])
    if args.ablation_frozen_llm:
        frozen = rest + ["--output_dir", f"{output_dir}/frozen_llm"]
        results["instruct_frozen_llm"] = run_stage(["--config", f"{prefix}_instruct", "--stage", "instruct",
                                                    "--freeze_llm", "true", "--model_name_or_path",
                                                    f"{output_dir}/align/final", *frozen])  # fmt: skip
        results["eval_frozen_llm"] = run_stage(["--config", f"{prefix}_eval", "--stage", "eval", *frozen])
    results["total_seconds"] = time.perf_counter() - start
    print(f"Groma {prefix}: {json.dumps(results, indent=1)}")
    write_metrics(output_dir, "all", {"total_seconds": results["total_seconds"]})
    return results


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = flag_value(argv, "--stage")
    if stage is None and flag_value(argv, "--config") is not None:
        return run_stage(argv)  # a stage's config names its stage (`stage: align`)
    return run_all(argv) if (stage or "all") == "all" else run_stage(argv)


if __name__ == "__main__":
    run_recipe(main)
