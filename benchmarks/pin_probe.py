"""Where does the position signal get lost on the toy world? Probes of the frozen caption VL-LLM PIN starts from.

    python benchmarks/pin_probe.py --base_model recipes/toy_checkpoints/vlm-caption --device cuda --out runs/pin/probe

PIN can only work if (1) a position code added to the vision tokens survives the frozen Q-Former into the LLM's
input, and (2) the frozen LLM can turn position information in its visual prefix into box text — for the object the
prompt names, among 1–3 objects. The probes measure each link alone (nothing here is trained into the product):

1. `qformer_linear`: single-object scenes; the frozen ViT's tokens plus a fixed random position code of scale α
   (a stand-in for a trained π) go through the frozen Q-Former and projection; a ridge regression from the 32
   prefix vectors to the object's box is fitted on 75% and scored (R²) on the rest. α = 0 is the base as it is.
2. `lm_oracle` and `lm_bind`: the Q-Former is bypassed; a small MLP writes the LLM's visual prefix (32 vectors, in 4
   slots of 8) from ground truth — `oracle`: only the prompted object's grid box, in a random slot (can the frozen
   LLM read a box from its prefix at all?); `bind`: every object's box *and* its colour/shape one-hot, each in its
   own random slot (can it find the named object's entry and copy its box — what a real LLM does in context?).
   Trained with PIN's prompt and loss, then greedy mIoU and centre correlation on new scenes.
   `lm_region`: PIN's best case on the LLM side — the prefix is a learned constant plus the mean of a learned
   per-grid-cell code over the cells the prompted object covers (linear in the object's occupancy, as the path
   π → Q-Former values → projection is when the queries attend to the object). If this fails where `oracle`
   works, the frozen LLM cannot turn an averaged position code into box text and no π can teach it to.

3. `qformer_attention` (cheap): share of the frozen Q-Former's cross-attention on the object of single-object
   scenes, per layer, against the object's share of the image (and with a trained π added, given `--pin`);
   `trained_insert` (needs `--pin`): ‖π‖ against the ViT tokens' norm and the ridge R² of the box from the projected
   Q-Former outputs with and without that π — does the trained insert carry position into the prefix, and does it
   drown the image (π far above the tokens' norm)?

0. `box_loss` (runs first, cheap): the per-token loss of PIN's box target behind the image prefix vs text only
   (`recipes.systems.vpgtrans.captioner.box_prefix_loss`). A ratio far above 1 means the LM stops writing boxes
   once an image is in front; PIN then learns to blind the VLM instead of localising. Fix the base first.

If (2-oracle) works and (2-bind) does not, the frozen toy LLM lacks the in-context lookup that PIN relies on in a
real LLM; if (1) stays low for every α, the frozen Q-Former discards position. Output: `<out>/probe.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou


def render(seed: int, n: int, split: str = "train"):
    from groundvlm.recipes.toyworld import ToyWorld

    world = ToyWorld(seed, split=split)
    return [world.scene(i) for i in range(n)]


def ridge_r2(x: np.ndarray, y: np.ndarray, train_fraction: float = 0.75) -> float:
    """Held-out R² of a ridge regression (closed form, standardised inputs); its strength is picked on the last
    fifth of the training part, then refitted on all of it."""

    def fit(xa, ya, lam):  # dual form: the features (up to 257 x D) far outnumber the images
        xa_t, ya_t = torch.as_tensor(xa, dtype=torch.float64), torch.as_tensor(ya - ya.mean(0), dtype=torch.float64)
        gram = xa_t @ xa_t.T + lam * torch.eye(len(xa_t), dtype=torch.float64)
        return (xa_t.T @ torch.linalg.solve(gram, ya_t)).numpy(), ya.mean(0)

    def r2(w, b, xb, yb):
        pred = xb @ w + b
        return 1 - ((yb - pred) ** 2).sum() / ((yb - yb.mean(0)) ** 2).sum()

    n = int(len(x) * train_fraction)
    mu, sd = x[:n].mean(0), x[:n].std(0) + 1e-6
    x = (x - mu) / sd
    m = int(n * 0.8)
    lams = np.logspace(-1, 6, 15)
    best = max(lams, key=lambda lam: r2(*fit(x[:m], y[:m], lam), x[m:n], y[m:n]))
    return float(r2(*fit(x[:n], y[:n], best), x[n:], y[n:]))


def _single_object(scenes):
    single = [s for s in scenes if len(s.objects) == 1]
    if len(single) < 8:
        raise ValueError(f"only {len(single)} single-object scenes among {len(scenes)}; raise --images")
    return single


def _vit_tokens(vlm, image_processor, scenes, device) -> torch.Tensor:
    feats = []
    for i in range(0, len(scenes), 128):
        px = image_processor([s.image.convert("RGB") for s in scenes[i : i + 128]], return_tensors="pt")["pixel_values"]
        feats.append(vlm.vision_model(pixel_values=px.to(device)).last_hidden_state.float())
    return torch.cat(feats)


def _cell_masks(grid_boxes, n_tokens: int, grid: int) -> torch.Tensor:
    """(B, n_tokens) 0/1 masks of the cells of each inclusive grid box (x1, y1, x2, y2) on a `grid`x`grid` raster that
    fills the last grid² tokens (leading CLS tokens get 0)."""
    if n_tokens < grid * grid:
        raise ValueError(f"{n_tokens} vision tokens cannot hold a {grid}x{grid} patch grid")
    masks = torch.zeros(len(grid_boxes), grid, grid)
    for b, (x1, y1, x2, y2) in enumerate(grid_boxes):
        masks[b, y1 : y2 + 1, x1 : x2 + 1] = 1
    return torch.cat([torch.zeros(len(grid_boxes), n_tokens - grid * grid), masks.flatten(1)], dim=1)


def _prefix_r2(vlm, feats: torch.Tensor, add, boxes: np.ndarray) -> float:
    """Held-out ridge R² of `boxes` from the projected Q-Former outputs (the LLM's visual prefix) of `feats + add`."""
    prefix = []
    for i in range(0, len(feats), 128):
        f = feats[i : i + 128] + add
        q = vlm.query_tokens.expand(f.shape[0], -1, -1).float()
        hidden = vlm.qformer(query_embeds=q, encoder_hidden_states=f).last_hidden_state
        prefix.append(vlm.language_projection(hidden).flatten(1).cpu())
    return ridge_r2(torch.cat(prefix).numpy(), boxes)


@torch.no_grad()
def qformer_linear(vlm, image_processor, scenes, device, alphas=(0.0, 0.3, 1.0, 3.0)) -> dict:
    from groundvlm.modeling.pin_insert import sinusoid_table

    single = [s for s in scenes if len(s.objects) == 1]
    boxes = np.array([s.objects[0].box for s in single], dtype=np.float64)
    feats = _vit_tokens(vlm, image_processor, single, device)
    gen = torch.Generator().manual_seed(0)
    n_tok, dim = feats.shape[1:]
    code = sinusoid_table(n_tok, 64) @ torch.randn(64, dim, generator=gen)
    code = (code / code.norm(dim=-1, keepdim=True) * feats.norm(dim=-1).mean().cpu()).to(device)
    out = {"images": len(single), "vit_tokens_r2": ridge_r2(feats[:, 1:].flatten(1).cpu().numpy(), boxes)}
    for alpha in alphas:
        out[f"prefix_r2_alpha{alpha}"] = _prefix_r2(vlm, feats, alpha * code, boxes)
    return out


@torch.no_grad()
def qformer_attention(vlm, image_processor, scenes, device, insert: torch.Tensor | None = None) -> dict:
    """How much of the frozen Q-Former's cross-attention lands on the object (single-object scenes; the patch grid
    equals the box grid on the toy world), per layer, against the object's share of the image; with `insert` (a
    trained π) added to the ViT tokens as well."""
    from groundvlm.recipes.toyworld.corpus import box_codec

    single = _single_object(scenes)[:256]
    feats = _vit_tokens(vlm, image_processor, single, device)
    masks = _cell_masks([s.objects[0].grid_box for s in single], feats.shape[1], box_codec().grid_size).to(device)
    out = {"images": len(single), "object_area_share": float(masks.sum(1).mean() / (masks.shape[1] - 1))}
    for name, add in (("attention_on_object", None), ("attention_on_object_with_insert", insert)):
        if name.endswith("with_insert") and add is None:
            continue
        f = feats if add is None else feats + add.to(device=device, dtype=feats.dtype)
        q = vlm.query_tokens.expand(f.shape[0], -1, -1).float()
        previous = vlm.qformer.config._attn_implementation
        vlm.qformer.config._attn_implementation = "eager"  # attention weights come from the eager path only
        try:
            result = vlm.qformer(query_embeds=q, encoder_hidden_states=f, output_attentions=True)
        finally:
            vlm.qformer.config._attn_implementation = previous
        layers = [a for a in result.cross_attentions if a is not None]
        out[name] = [float((a.mean(1) * masks[:, None, :]).sum(-1).mean()) for a in layers]
    return out


@torch.no_grad()
def trained_insert(vlm, image_processor, scenes, device, insert: torch.Tensor) -> dict:
    """A trained π against the frozen link it must pass: ‖π‖ vs the ViT tokens' norm, and the held-out R² of a ridge
    read-out of the box from the projected Q-Former outputs with and without π (single-object scenes)."""
    single = _single_object(scenes)
    boxes = np.array([s.objects[0].box for s in single], dtype=np.float64)
    feats = _vit_tokens(vlm, image_processor, single, device)
    insert = insert.to(device=device, dtype=feats.dtype)
    out = {
        "images": len(single),
        "vit_token_norm": float(feats.norm(dim=-1).mean()),
        "insert_norm": float(insert.norm(dim=-1).mean()),
    }
    out["prefix_r2_without_insert"] = _prefix_r2(vlm, feats, 0 * insert, boxes)
    out["prefix_r2_with_insert"] = _prefix_r2(vlm, feats, insert, boxes)
    return out


class SlotPrefix(nn.Module):
    """Writes the LLM's visual prefix from ground-truth objects: `slots` slots of `per_slot` vectors each."""

    def __init__(self, colours, shapes, grid: int, dim: int, slots: int, per_slot: int, with_identity: bool):
        super().__init__()
        self.colours, self.shapes, self.grid, self.with_identity = list(colours), list(shapes), grid, with_identity
        self.slots, self.per_slot, self.dim = slots, per_slot, dim
        width = 4 * grid + (len(self.colours) + len(self.shapes) if with_identity else 0)
        self.mlp = nn.Sequential(nn.Linear(width, 512), nn.SiLU(), nn.Linear(512, per_slot * dim))

    def encode(self, obj) -> torch.Tensor:
        v = torch.zeros(4 * self.grid + (len(self.colours) + len(self.shapes) if self.with_identity else 0))
        for k, cell in enumerate(obj.grid_box):
            v[k * self.grid + cell] = 1
        if self.with_identity:
            v[4 * self.grid + self.colours.index(obj.colour)] = 1
            v[4 * self.grid + len(self.colours) + self.shapes.index(obj.shape)] = 1
        return v

    def forward(self, object_sets, rng: np.random.Generator) -> torch.Tensor:
        device = next(self.parameters()).device
        batch = len(object_sets)
        x = torch.zeros(batch, self.slots, self.mlp[0].in_features)
        mask = torch.zeros(batch, self.slots, 1)
        for b, objs in enumerate(object_sets):
            for slot, obj in zip(rng.permutation(self.slots), objs):
                x[b, slot], mask[b, slot] = self.encode(obj), 1
        y = self.mlp(x.to(device)) * mask.to(device)
        return y.view(batch, self.slots * self.per_slot, self.dim)


class RegionPrefix(nn.Module):
    """PIN's best case on the LLM side: the whole prefix is a constant plus the mean, over the grid cells the prompted
    object covers, of a learned per-cell code — what the Q-Former's value path would carry if every query attended
    to exactly the object's tokens and π were that code. Linear in the object's occupancy, as π's path is."""

    def __init__(self, grid: int, dim: int, n_prefix: int):
        super().__init__()
        self.grid, self.dim, self.n_prefix = grid, dim, n_prefix
        self.code = nn.Parameter(torch.randn(grid * grid, n_prefix * dim) * 0.02)
        self.constant = nn.Parameter(torch.zeros(n_prefix * dim))

    def forward(self, object_sets, rng: np.random.Generator) -> torch.Tensor:
        cells = self.grid * self.grid
        masks = _cell_masks([objs[0].grid_box for objs in object_sets], cells, self.grid).to(self.code.device)
        y = self.constant + (masks @ self.code) / masks.sum(1, keepdim=True)
        return y.view(len(object_sets), self.n_prefix, self.dim)


def lm_prefix_probe(vlm, processor, scenes, test_scenes, device, mode: str, steps: int, batch: int, lr: float) -> dict:
    from groundvlm.recipes.systems.pin.evaluation import center_correlation, check_max_new_tokens
    from groundvlm.recipes.toyworld.corpus import box_codec

    colours = sorted({o.colour for s in scenes for o in s.objects})
    shapes = sorted({o.shape for s in scenes + test_scenes for o in s.objects})
    codec = box_codec()
    n_query, dim = vlm.config.num_query_tokens, vlm.config.text_config.hidden_size
    if n_query % 4:
        raise ValueError(f"the slot probe needs num_query_tokens divisible by 4, got {n_query}")
    if mode == "region":
        writer = RegionPrefix(codec.grid_size, dim, n_query).to(device)
    else:
        writer = SlotPrefix(colours, shapes, codec.grid_size, dim, 4, n_query // 4, with_identity=(mode == "bind")).to(
            device
        )
    current = {}
    original = vlm.language_projection.forward
    vlm.language_projection.forward = lambda hidden: current["prefix"].to(hidden.dtype)
    rng = np.random.default_rng(0)

    def pick(pool, n):
        chosen = [pool[int(i)] for i in rng.integers(0, len(pool), n)]
        idx = [int(rng.integers(len(s.objects))) for s in chosen]
        sets = [[s.objects[i]] if mode != "bind" else s.objects for s, i in zip(chosen, idx)]
        return chosen, idx, sets

    optimizer = torch.optim.Adam(writer.parameters(), lr=lr)
    losses, start = [], time.time()
    try:
        for _ in range(steps):
            chosen, idx, sets = pick(scenes, batch)
            enc = processor(
                images=[s.image.convert("RGB") for s in chosen],
                objects=[s.objects[i].name for s, i in zip(chosen, idx)],
                boxes=[s.objects[i].box for s, i in zip(chosen, idx)],
            ).to(device)
            current["prefix"] = writer(sets, rng)
            loss = vlm(**enc).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        writer.eval()
        preds, refs = [], []
        with torch.no_grad():
            for i in range(0, len(test_scenes), 128):
                part = test_scenes[i : i + 128]
                idx = [int(rng.integers(len(s.objects))) for s in part]
                sets = [[s.objects[j]] if mode != "bind" else s.objects for s, j in zip(part, idx)]
                enc = processor(
                    images=[s.image.convert("RGB") for s in part],
                    objects=[s.objects[j].name for s, j in zip(part, idx)],
                ).to(device)
                current["prefix"] = writer(sets, rng)
                ids = vlm.generate(**enc, max_new_tokens=check_max_new_tokens(processor, None), do_sample=False)
                texts = processor.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                for text, s, j in zip(texts, part, idx):
                    preds.append(codec.decode(" " + text.lstrip())[0])  # unparsed: the reference's cell [0,0,0,0]
                    refs.append(list(s.objects[j].box))
    finally:
        vlm.language_projection.forward = original
    ious = box_iou(torch.tensor(preds, dtype=torch.float64), torch.tensor(refs, dtype=torch.float64)).diagonal()
    return {
        "mode": mode,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seconds": round(time.time() - start, 1),
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
        "miou": float(ious.mean()),
        "center_corr": center_correlation(preds, refs),
        "prompts": len(preds),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", default="recipes/toy_checkpoints/vlm-caption")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="runs/pin/probe")
    parser.add_argument("--images", type=int, default=4000, help="training scenes (train categories)")
    parser.add_argument("--test_images", type=int, default=400, help="probe test scenes (held-out categories)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--pin", default=None, help="a trained PIN folder (recipes/pin.py's <run>/pin/final) for trained_insert"
    )
    parser.add_argument(
        "--probes", nargs="*", default=["box_loss", "qformer_linear", "lm_oracle", "lm_region", "lm_bind"]
    )
    args = parser.parse_args(argv)
    from transformers import AutoProcessor

    from groundvlm.modeling import VPGTransModel
    from groundvlm.processing import PinProcessor
    from groundvlm.recipes.common.provenance import git_commit
    from groundvlm.recipes.common.run_dir import json_safe

    torch.manual_seed(0)
    device = torch.device(args.device)
    vlm = VPGTransModel.from_pretrained(args.base_model).to(device).eval()
    for p in vlm.parameters():
        p.requires_grad_(False)
    base_processor = AutoProcessor.from_pretrained(args.base_model)
    processor = PinProcessor.from_base_processor(base_processor)
    scenes, test_scenes = render(5, args.images), render(6, args.test_images, split="held_out")
    report = {
        "base_model": args.base_model,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for probe in args.probes:
        if probe == "box_loss":
            from groundvlm.recipes.systems.vpgtrans.captioner import BOX_LOSS_RATIO_MAX, box_prefix_loss

            report[probe] = box_prefix_loss(vlm, base_processor, n_images=min(args.test_images, 64), split="held_out")
            report[probe]["passed"] = report[probe]["ratio"] <= BOX_LOSS_RATIO_MAX
        elif probe in ("trained_insert", "qformer_attention"):
            insert = None
            if args.pin:
                from groundvlm.modeling import PinForLocalization

                insert = PinForLocalization.from_pretrained(args.pin).positional_insert().detach().float()
            elif probe == "trained_insert":
                raise SystemExit("the trained_insert probe needs --pin <trained PIN folder>")
            fn = trained_insert if probe == "trained_insert" else qformer_attention
            report[probe] = fn(vlm, base_processor.image_processor, scenes, device, insert)
        elif probe == "qformer_linear":
            report[probe] = qformer_linear(vlm, base_processor.image_processor, scenes, device)
        elif probe in ("lm_oracle", "lm_bind", "lm_region"):
            report[probe] = lm_prefix_probe(
                vlm, processor, scenes, test_scenes, device, probe[3:], args.steps, args.batch, args.lr
            )
        else:
            raise SystemExit(f"unknown probe {probe!r}")
        print(probe, json.dumps(json_safe(report[probe])), flush=True)
        (out / "probe.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
