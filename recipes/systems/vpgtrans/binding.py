"""A direct binding signal for a BLIP-2-style Q-Former: train it to keep which colour goes with which shape.

BLIP-2's first stage gives a real Q-Former this binding (image-text matching against captions that differ only in
which attribute goes with which object, BLIP-2 §3.2); the toy Q-Former trained on captions does not keep it (an
attention probe on its outputs reads the named shape's colour at scene chance: benchmarks/binding_probe.py).
`bind_qformer` trains the Q-Former and its query tokens (ViT and LLM untouched) through an `AttentionProbe` that must
name the colour of the shape it is asked about, on 2-3-object scenes. Never positions: the objective names a colour.
"""

from __future__ import annotations

import numpy as np
import torch

from groundvlm.recipes.toyworld import ToyWorld


def colour_rows(seed: int, n_scenes: int, min_objects: int = 2) -> list[dict]:
    """One row per object whose shape occurs once in its scene (so "the star" names it): scene index, image, shape,
    colour, and `options` -- the distinct colours of the scene (what naming a random object's colour picks from)."""
    world = ToyWorld(seed=seed, split="all")
    rows = []
    for i in range(n_scenes):
        scene = world.scene(i)
        if len(scene.objects) < min_objects:
            continue
        shapes = [o.shape for o in scene.objects]
        colours = {o.colour for o in scene.objects} - {None}
        for obj in scene.objects:
            if obj.colour is not None and shapes.count(obj.shape) == 1:
                rows.append(
                    {
                        "scene": i,
                        "image": scene.image,
                        "shape": obj.shape,
                        "colour": obj.colour,
                        "options": len(colours),
                    }
                )
    return rows


@torch.no_grad()
def stage_features(model, processor, rows: list[dict], batch_size: int = 64) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per scene: (ViT patch tokens, Q-Former query outputs, projected visual prompts), each [tokens, dim]."""
    images = {}
    for row in rows:
        images.setdefault(row["scene"], row["image"])
    scenes, out = sorted(images), {}
    model.eval()
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        pixels = processor.image_processor([images[i].convert("RGB") for i in chunk], return_tensors="pt")
        feats = model.get_image_features(pixels["pixel_values"].to(next(model.parameters()).device))
        # one pass: the ViT's tokens, the Q-Former's outputs and the projected prompts, in STAGES order
        stages = (feats.last_hidden_state, feats.qformer_outputs.last_hidden_state, feats.pooler_output)
        for k, i in enumerate(chunk):
            out[i] = tuple(t[k].float().cpu() for t in stages)
    return out


class AttentionProbe(torch.nn.Module):
    """A learned query per shape name attends over a feature sequence; a linear head names the colour."""

    def __init__(self, dim: int, n_shapes: int, n_colours: int):
        super().__init__()
        self.query = torch.nn.Embedding(n_shapes, dim)
        self.key = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, n_colours)

    def forward(self, features: torch.Tensor, shape_ids: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("btd,bd->bt", self.key(features), self.query(shape_ids)) / features.shape[-1] ** 0.5
        pooled = (scores.softmax(-1).unsqueeze(-1) * features).sum(1)
        return self.head(pooled)


def probe_batch(rows, feats, idx, stage: int, shapes, colours) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows `idx` as (one stage's features [B, tokens, dim], shape ids [B], colour ids [B])."""
    x = torch.stack([feats[rows[j]["scene"]][stage] for j in idx])
    s = torch.tensor([shapes.index(rows[j]["shape"]) for j in idx])
    y = torch.tensor([colours.index(rows[j]["colour"]) for j in idx])
    return x, s, y


def bind_qformer(model, processor, steps: int, lr: float = 1e-3, scenes: int = 4000, seed: int = 0) -> list[dict]:
    """Train `model`'s Q-Former + query tokens in place through an AttentionProbe on the colour of the named shape
    (2-3-object scenes of seed `seed + 10`; the probe's held-out scenes use other seeds). Returns the loss curve."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = colour_rows(seed + 10, scenes)
    shapes = sorted({r["shape"] for r in rows})
    colours = sorted({r["colour"] for r in rows})
    feats = stage_features(model, processor, rows)
    qformer, queries = model.qformer, model.query_tokens
    device = queries.device
    head = AttentionProbe(queries.shape[-1], len(shapes), len(colours)).to(device)
    optimizer = torch.optim.AdamW([*qformer.parameters(), queries, *head.parameters()], lr=lr)
    curve = []
    qformer.train()
    for step in range(1, steps + 1):
        x, s, y = (t.to(device) for t in probe_batch(rows, feats, rng.integers(0, len(rows), 64), 0, shapes, colours))
        out = qformer(query_embeds=queries.expand(len(x), -1, -1), encoder_hidden_states=x).last_hidden_state
        loss = torch.nn.functional.cross_entropy(head(out, s), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps:
            curve.append({"step": step, "loss": float(loss)})
    qformer.eval()
    return curve
