"""VPGTrans recipe: transfer a BLIP-2 visual prompt generator (VPG) to a new LLM, plus the paper's baselines.

    accelerate launch recipes/vpgtrans.py --stage converter --config converter_opt_small_to_base
    accelerate launch recipes/vpgtrans.py --stage stage1 --config stage1 --init_model runs/.../converter/model
    accelerate launch recipes/vpgtrans.py --stage stage2 --config stage2 --init_model runs/.../stage1/model
    accelerate launch recipes/vpgtrans.py --stage tfs|inherit|qformer_pretrain|eval ...

The stages, what each starts from and trains: `groundvlm.recipes.systems.vpgtrans.stages`. The ViT and the LLM
are frozen in every stage, unless `--unfreeze_lm` (toy captioner only: a tiny toy LM needs to adapt;
`--text_replay_weight` then mixes in its pretraining text so it keeps its language). After every (inner) epoch the
model is evaluated zero-shot and the curve is written to the run directory's `metrics.json` under `eval_curve`,
which `groundvlm.recipes.systems.vpgtrans.speedup` turns into the paper's speed-up table and Fig. 7-style plot.
The trained model and its processor are saved to `<output_dir>/model`.

Data: `--dataset toy` (default; scenes of the toy world, toy base models from `toy_asset`, built on demand)
or `--dataset coco` with `--train_file` (LAVIS / Karpathy COCO json), `--image_root`, and for evaluation
`--eval_caption_file`, `--eval_vqa_questions` + `--eval_vqa_annotations` + `--eval_vqa_image_root`
(VQAv2 / OK-VQA) or `--eval_gqa_file` + `--eval_vqa_image_root` (GQA).
"""

from __future__ import annotations

from groundvlm.recipes.common.arguments import parse_recipe_args, run_recipe
from groundvlm.recipes.systems.vpgtrans.arguments import VPGTRANS_ARGUMENTS
from groundvlm.recipes.systems.vpgtrans.stages import run_vpgtrans


def main(argv=None):
    """Run one stage; returns what `run_stage` returns (the stage writes its model, metrics and curve itself)."""
    return run_vpgtrans(*parse_recipe_args(VPGTRANS_ARGUMENTS, argv, recipe="vpgtrans"))


if __name__ == "__main__":
    run_recipe(main)
