"""An experiment on a built caption VL-LLM (not a recipe step): add 2-D sine-cosine values to its ViT's position
table, so that the frozen ViT's output tokens say where they are, and save the result as a new base to continue
(benchmarks/RESULTS.md, 2026-12-06: "v3b").

    python benchmarks/vit_position_surgery.py recipes/toy_checkpoints/vlm-caption runs/v3b/init
    python -m groundvlm.recipes.systems.vpgtrans.captioner --preset cpu-located --out runs/v3b \
        --init_model runs/v3b/init --max_steps 600 --iters_per_inner_epoch 600

Prints `toyworld.vision.token_position_r2` of the ViT before and after (32 toy scenes of seed 5).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a VPGTrans / BLIP-2 caption VL-LLM folder")
    parser.add_argument("out", help="where to save the changed model and its processor")
    args = parser.parse_args(argv)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    import groundvlm.modeling  # noqa: F401  (registers the auto classes)
    import groundvlm.processing  # noqa: F401
    from groundvlm.recipes.toyworld import ToyWorld
    from groundvlm.recipes.toyworld.vision import IMAGE_SIZE, PATCH_SIZE, normalise, sincos_2d, token_position_r2

    model = AutoModelForImageTextToText.from_pretrained(args.source)
    processor = AutoProcessor.from_pretrained(args.source)
    vit = model.vision_model
    world = ToyWorld(seed=5, split="all")
    images = torch.from_numpy(np.stack([np.asarray(world.scene(i).image.convert("RGB")) for i in range(32)]))
    pixels = normalise("blip2", images)
    out = {"before": token_position_r2(vit, pixels)}
    with torch.no_grad():
        vit.embeddings.position_embedding[0, 1:] += sincos_2d(IMAGE_SIZE // PATCH_SIZE, vit.config.hidden_size)
    out["after"] = token_position_r2(vit, pixels)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(out)
    return out


if __name__ == "__main__":
    main()
