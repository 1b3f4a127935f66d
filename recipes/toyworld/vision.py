"""Toy vision encoders: stand-ins for EVA/CLIP ViT (BLIP-2), CLIP ViT-L (LLaVA) and DINOv2.

Each is an ordinary transformers vision model (`Blip2VisionModel`, `CLIPVisionModel`, `Dinov2Model`) at
112 px with 7-px patches, so 16 x 16 patches + CLS = 257 tokens and one patch per cell of the toy world's
16 x 16 grid (as PIN's 224 px / 14 px patches). It is pretrained alone on a *position-free* objective,
multi-label "which categories / colours / shapes / textures are in the image" (binary cross-entropy on a
linear probe over the mean of all output tokens), on toy images of every category: like CLIP/EVA, it has
seen everything but was never told where anything is. The probe head is a training device and is not
saved; the encoder is saved with `save_pretrained` together with the image processor whose
normalisation it was trained with, so `AutoImageProcessor.from_pretrained(folder)` feeds it correctly.

On the GPU preset this reaches 0.97 name recall on held-out shapes, and BLIP-2's vision config must not keep its `initializer_range=1e-10` default (meant for
loading weights): trained from scratch, the output then does not depend on the image. We set 0.02.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    BitImageProcessor,
    Blip2VisionConfig,
    Blip2VisionModel,
    BlipImageProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
)

VISION_KINDS = ("blip2", "clip", "dinov2")

IMAGE_SIZE = 112
PATCH_SIZE = 7

# The normalisation each family's real image processor uses (BLIP-2 and CLIP: OpenAI CLIP; DINOv2: ImageNet).
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALISATION = {
    "blip2": (_CLIP_MEAN, _CLIP_STD),
    "clip": (_CLIP_MEAN, _CLIP_STD),
    "dinov2": (_IMAGENET_MEAN, _IMAGENET_STD),
}


def _check_kind(kind: str) -> None:
    if kind not in VISION_KINDS:
        raise ValueError(f"unknown vision encoder kind {kind!r}; expected one of {VISION_KINDS}")


POSITION_INITS = ("learned", "sincos")


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings [grid * grid, dim] in row-major patch order (MAE, He et al.
    2022, section 3): half the channels encode the column, half the row, each as sin/cos at geometric frequencies."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )

    def encode(pos):
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def vision_model(
    kind: str, hidden_size: int, num_layers: int, num_heads: int, position_init: str = "learned"
) -> torch.nn.Module:
    """A freshly initialised `kind` encoder at 112 px / patch 7 (257 output tokens).

    Returns `Blip2VisionModel`, `CLIPVisionModel` or `Dinov2Model`; all map pixel_values [B, 3, 112, 112]
    to last_hidden_state [B, 257, hidden_size].

    position_init: "learned" keeps the family's random init of the learned position embeddings (std 0.02);
    "sincos" (BLIP-2 kind only) starts them at 2-D sine-cosine values, a signal as large as the patch embeddings,
    so that the trained encoder's output tokens still say where they are, as a real ViT's do. (Trained from the
    random init on the position-free objective below, the toy ViT's tokens kept little of their position: a
    linear read-out of a token's own column / row reaches R² 0.26 / 0.41 on the committed caption VL-LLM's ViT.)
    """
    _check_kind(kind)
    if position_init not in POSITION_INITS:
        raise ValueError(f"unknown position_init {position_init!r}; expected one of {POSITION_INITS}")
    if position_init != "learned" and kind != "blip2":
        raise ValueError(f"position_init={position_init!r} is implemented for the blip2 kind only, not {kind!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    common = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        initializer_range=0.02,
    )
    if kind == "blip2":
        # initializer_range=0.02 explicitly: Blip2VisionConfig defaults to 1e-10 (see module docstring).
        model = Blip2VisionModel(Blip2VisionConfig(intermediate_size=4 * hidden_size, **common))
        if position_init == "sincos":
            table = model.embeddings.position_embedding  # [1, 1 + patches, hidden]: CLS first
            grid = IMAGE_SIZE // PATCH_SIZE
            with torch.no_grad():
                table.zero_()
                table[0, 1:] = sincos_2d(grid, hidden_size)
        return model
    if kind == "clip":
        return CLIPVisionModel(CLIPVisionConfig(intermediate_size=4 * hidden_size, **common))
    return Dinov2Model(Dinov2Config(mlp_ratio=4, **common))


def image_processor(kind: str):
    """The image processor matching `kind`'s input convention at 112 px (saved next to the encoder)."""
    _check_kind(kind)
    mean, std = NORMALISATION[kind]
    if kind == "blip2":
        return BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=mean, image_std=std)
    cls = CLIPImageProcessor if kind == "clip" else BitImageProcessor
    return cls(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=mean,
        image_std=std,
    )


def normalise(kind: str, images: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, 112, 112, 3] -> pixel_values [B, 3, 112, 112], as `image_processor(kind)` would.

    The toy images are already 112 px, so the processor's resize/crop are the identity and only
    rescale + normalise remain; doing them on tensors keeps training off the PIL path.
    """
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in NORMALISATION[kind])
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


def pooled_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Mean of all output tokens [B, hidden]: position-free, and it sends gradient to every token."""
    return model(pixel_values=pixel_values).last_hidden_state.mean(dim=1)


def pretrain_vision(
    kind: str,
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    device: str = "cpu",
    bf16: bool = False,
) -> tuple[torch.nn.Linear, dict]:
    """Train `model` + a linear probe with multi-label BCE; returns (probe head, {"final_loss", "losses"}).

    images: uint8 [N, 112, 112, 3]; labels: float multi-hot [N, L]. Batches are drawn with replacement
    from a seeded generator (a fixed number of steps, not epochs, so budgets scale by steps).
    """
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {tuple(images.shape)} {images.dtype}"
        )
    if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be [N, L] with N={images.shape[0]}, got {tuple(labels.shape)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(model.config.hidden_size, labels.shape[1])
    # Start the head at the label prior (log-odds of each label's frequency): otherwise the first steps
    # only learn the prior and the encoder then sits on that plateau (measured: with a zero-bias head and
    # lr 1e-3, 120 CPU steps left colour recall at 0; with this init and lr 3e-3 it reached 0.68).
    freq = labels.float().mean(0).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        head.bias.copy_(torch.log(freq / (1 - freq)))
    model.to(device).train()
    head.to(device).train()
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    # Linear warm-up then cosine decay: stable from scratch without tuning per preset.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    losses = []
    bar = tqdm(range(steps), desc=f"vision {kind}", unit="step")
    for _ in bar:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        x = normalise(kind, images[idx]).to(device)
        y = labels[idx].to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            logits = head(pooled_features(model, x))
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    tail = losses[-max(1, steps // 10) :]
    return head, {"final_loss": float(np.mean(tail)), "losses": losses}


@torch.no_grad()
def probe_predictions(
    kind: str,
    model: torch.nn.Module,
    head: torch.nn.Linear,
    images: torch.Tensor,
    batch_size: int = 64,
    device: str = "cpu",
) -> torch.Tensor:
    """Sigmoid probabilities [N, L] of the probe head on uint8 images [N, 112, 112, 3]."""
    model.to(device).eval()
    head.to(device).eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = normalise(kind, images[i : i + batch_size]).to(device)
        out.append(torch.sigmoid(head(pooled_features(model, x))).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def token_position_r2(model: torch.nn.Module, pixel_values: torch.Tensor, ridge: float = 0.1) -> dict:
    """How well each output patch token says where it is: ridge regression from one token to its own (column,
    row), fitted on 3/4 of the tokens of `pixel_values` [B, 3, 112, 112] and scored (R²) on the rest.
    A real ViT's tokens are near 1; a position-blind encoder near 0."""
    model.eval()
    tokens = model(pixel_values=pixel_values).last_hidden_state[:, 1:].float().cpu()  # drop CLS
    batch, patches, hidden = tokens.shape
    grid = int(round(patches**0.5))
    if grid * grid != patches:
        raise ValueError(f"expected a square patch grid, got {patches} patch tokens")
    x = torch.cat([tokens.reshape(-1, hidden), torch.ones(batch * patches, 1)], dim=1).double()
    index = torch.arange(patches).repeat(batch)
    y = torch.stack([index % grid, index // grid], dim=1).double()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[: len(x) * 3 // 4], order[len(x) * 3 // 4 :]
    weights = torch.linalg.solve(
        x[train].T @ x[train] + ridge * torch.eye(x.shape[1], dtype=x.dtype), x[train].T @ y[train]
    )
    residual = ((x[test] @ weights - y[test]) ** 2).sum(0)
    total = ((y[test] - y[test].mean(0)) ** 2).sum(0)
    r2 = (1 - residual / total).tolist()
    return {"column_r2": round(r2[0], 4), "row_r2": round(r2[1], 4)}


def label_names(categories: list[str]) -> list[str]:
    """The multi-label vocabulary: every category, every colour and every shape ("category:red star", ...).

    Categories are "<colour> <shape>" (recipes.toyworld); labelling the category as well as its parts asks
    the encoder to bind colour to shape, which a caption ("a red star and a blue ring") needs.
    """
    if not categories:
        raise ValueError("label_names needs the list of category names")
    colours = sorted({c.split(" ", 1)[0] for c in categories})
    shapes = sorted({c.split(" ", 1)[1] for c in categories})
    return [f"category:{c}" for c in categories] + [f"colour:{c}" for c in colours] + [f"shape:{s}" for s in shapes]


def _object_labels(obj) -> list[str]:
    return [f"category:{obj[0]}", f"colour:{obj[1]}", f"shape:{obj[2]}"]


def scene_labels(objects: list[list[tuple]], labels: list[str]) -> torch.Tensor:
    """Multi-hot targets [N, L] from each scene's objects given as (name, colour, shape) tuples."""
    index = {name: i for i, name in enumerate(labels)}
    out = torch.zeros(len(objects), len(labels))
    for row, scene_objects in enumerate(objects):
        for obj in scene_objects:
            for lab in _object_labels(obj):
                if lab not in index:
                    raise ValueError(f"object label {lab!r} is not in the label vocabulary")
                out[row, index[lab]] = 1.0
    return out


def render_scenes(world, indices, workers: int = 1) -> tuple[torch.Tensor, list[list[tuple]]]:
    """Scenes `indices` of a ToyWorld as the probe takes them: (uint8 images [N, H, W, 3], per-scene
    (name, colour, shape) lists); rendered by `world.render_scenes`."""
    from .world import render_scenes as render

    images, objects = render(world, indices, workers=workers)
    return torch.from_numpy(images), [[(o.name, o.colour, o.shape) for o in objs] for objs in objects]


def name_recall(probs: torch.Tensor, objects: list[list[tuple]], labels: list[str]) -> dict:
    """Per-object recall of the probe, ranked: for a scene with n distinct categories (colours, shapes),
    an object counts as recalled when its category (colour, shape) is among the n highest-scoring ones.

    Ranking rather than a 0.5 threshold measures what the encoder tells apart, independent of calibration.
    probs: [N, L] probe outputs; objects: per-scene (name, colour, shape) tuples.
    """
    groups = {"name_recall": "category:", "colour_recall": "colour:", "shape_recall": "shape:"}
    columns = {key: [i for i, lab in enumerate(labels) if lab.startswith(prefix)] for key, prefix in groups.items()}
    hits = dict.fromkeys(groups, 0)
    total = 0
    for row, scene_objects in enumerate(objects):
        total += len(scene_objects)
        for part, key in enumerate(groups):
            wanted = {f"{groups[key]}{obj[part]}" for obj in scene_objects}
            cols = columns[key]
            top = torch.topk(probs[row, cols], k=min(len(wanted), len(cols))).indices.tolist()
            predicted = {labels[cols[i]] for i in top}
            hits[key] += sum(f"{groups[key]}{obj[part]}" in predicted for obj in scene_objects)
    return {k: v / max(total, 1) for k, v in hits.items()}
