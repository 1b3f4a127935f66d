"""The three training stages (FoundationVision/groma groma/train/train_det.py and train.py).

det: the proposer is trained with transformers' Deformable-DETR criterion (`DeformableDetrHungarianMatcher`,
`DeformableDetrImageLoss`: sigmoid focal loss, L1 and GIoU on matched boxes), class-agnostic (one label), with
the reference's weights (focal 2, L1 5, GIoU 2; matcher costs 2 / 5 / 2), auxiliary losses on every earlier
decoder layer and a binary loss on the encoder's per-pixel proposals (the two-stage `_enc` term). A batch comes
from one data source and trains that source's objectness head (`coco` or `sa1b`).
align / instruct: next-token loss on the assistant turns (see `data.GromaChatCollator`) through trl's
`SFTTrainer`, whose dataset preparation is skipped (the collator tokenises images and text together).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher, DeformableDetrImageLoss
from trl import SFTTrainer

from groundvlm.recipes.common.checkpointing import save_safetensors_atomic

from .data import SourceBatchSampler

TRAINED_WEIGHTS = "trained.safetensors"

# FoundationVision/groma groma/model/ddetr.py config: cls_loss_coefficient 2, bbox 5, giou 2; class_cost 2.
LOSS_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
MATCHER_COSTS = {"class_cost": 2.0, "bbox_cost": 5.0, "giou_cost": 2.0}
FOCAL_ALPHA = 0.25
# 0.1x learning rate for the deformable attention's sampling offsets (train_det.py's lr multipliers).
LOW_LR_PARAMETERS = ("sampling_offsets", "reference_points")


def detection_criterion() -> DeformableDetrImageLoss:
    matcher = DeformableDetrHungarianMatcher(**MATCHER_COSTS)
    return DeformableDetrImageLoss(matcher=matcher, num_classes=1, focal_alpha=FOCAL_ALPHA, losses=["labels", "boxes"])


def proposer_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The proposer's input under a frozen DINOv2: the mean of the last `proposer_feature_layers` block outputs,
    CLS dropped, as a (B, C, grid, grid) map (what `GromaForConditionalGeneration._project_and_propose` feeds it)."""
    cfg = model.config
    with torch.no_grad():
        pixel_values = model._check_pixel_values(pixel_values)
        hidden = model.vision_model(pixel_values, output_hidden_states=True).hidden_states
        feats = torch.stack(hidden[-cfg.proposer_feature_layers :]).mean(0)[:, 1:]
    grid = cfg.patch_grid
    return feats.transpose(1, 2).reshape(feats.shape[0], -1, grid, grid)


def detection_loss(model, pixel_values, targets: list[dict], source: str, criterion=None) -> tuple[torch.Tensor, dict]:
    """Total weighted detection loss and its terms (last layer unsuffixed, layer i `_i`, encoder `_enc`)."""
    if source not in ("coco", "sa1b"):
        raise ValueError(f"unknown detection source {source!r}; expected 'coco' or 'sa1b'")
    criterion = criterion or detection_criterion()
    out = model.region_proposer.detect(proposer_features(model, pixel_values))
    logits = out[f"logits_{source}"][..., None]  # (L, B, Q, 1)
    targets = [{k: v.to(pixel_values.device) for k, v in t.items()} for t in targets]
    outputs = {
        "logits": logits[-1], "pred_boxes": out["boxes"][-1],
        "auxiliary_outputs": [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], out["boxes"][:-1])],
    }  # fmt: skip
    terms = criterion(outputs, targets)
    enc = criterion({"logits": out["enc_logits"][..., None], "pred_boxes": out["enc_boxes"]}, targets)
    terms.update({f"{k}_enc": v for k, v in enc.items()})
    total = sum(LOSS_WEIGHTS[re.sub(r"(_\d+|_enc)$", "", k)] * v for k, v in terms.items())
    return total, {k: v.item() for k, v in terms.items()}


class ProposerDetection(nn.Module):
    """The det stage's training module: `forward` is `detection_loss` of the Groma model it holds. The Trainer
    wraps the module it trains (DistributedDataParallel under several processes), and DDP synchronises gradients
    only of work done inside the wrapper's forward, so the detection loss has to be a forward."""

    def __init__(self, groma: nn.Module):
        super().__init__()
        self.groma = groma
        self.criterion = detection_criterion()

    def forward(self, pixel_values, targets, source):
        return detection_loss(self.groma, pixel_values, targets, source, self.criterion)[0]


def _checkpointed(model: nn.Module) -> nn.Module:
    """The Groma model whose trained parameters a checkpoint holds (inside `ProposerDetection` in det)."""
    return model.groma if isinstance(model, ProposerDetection) else model


class TrainableCheckpoints:
    """Trainer checkpoints that hold the trained parameters only, under the model's own names (safetensors,
    written atomically): frozen weights never change, so a resume needs only these, and a 7B LLM frozen in det /
    align is not copied at every save. (transformers' full-model checkpoints rename DINOv2's attention weights
    on save but not on `Trainer`'s resume.) The final model of a stage is a `save_pretrained` folder."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir or self.args.output_dir)
        model = _checkpointed(self.model)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in trained}
        save_safetensors_atomic(tensors, output_dir / TRAINED_WEIGHTS, metadata={"format": "pt"})
        torch.save(self.args, output_dir / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = _checkpointed(model or self.model)
        state = load_file(str(Path(resume_from_checkpoint) / TRAINED_WEIGHTS))
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != trained:
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} holds other trained parameters than this stage trains "
                f"({len(state)} vs {len(trained)} tensors): was it written by another stage or option?"
            )
        model.load_state_dict(state, strict=False)

    def _load_best_model(self) -> None:
        raise NotImplementedError("load_best_model_at_end is not supported by the Groma recipe")


class DetectionTrainer(TrainableCheckpoints, Trainer):
    """Trains the proposer: single-source batches, the detection criterion, 0.1x lr for sampling offsets."""

    def __init__(self, *, model, sources: list[str], **kwargs):
        super().__init__(model=ProposerDetection(model), **kwargs)
        self.sources = sources

    def _get_train_sampler(self, train_dataset=None):
        return SourceBatchSampler(self.sources, self.args.per_device_train_batch_size, seed=self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = model(inputs["pixel_values"], inputs["targets"], inputs["source"])
        return (loss, None) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = model or self.model
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            low = [p for n, p in params if any(k in n for k in LOW_LR_PARAMETERS)]
            rest = [p for n, p in params if not any(k in n for k in LOW_LR_PARAMETERS)]
            groups = [{"params": rest}, {"params": low, "lr": self.args.learning_rate * 0.1}]
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = cls([g for g in groups if g["params"]], weight_decay=self.args.weight_decay, **kwargs)
        return self.optimizer


class GromaSFTTrainer(TrainableCheckpoints, SFTTrainer):
    """trl's SFTTrainer on Groma's chat samples: the collator does all tokenisation (dataset prep is skipped),
    `ground_boxes` travel to the model, and checkpoints are full `save_pretrained` folders."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # transformers' `Trainer.compute_loss` (not SFTTrainer's, whose token metrics expect text-only batches):
        # it hands `num_items_in_batch` (the target tokens of the whole step, over accumulated batches and
        # processes) to the model, so the loss is the step's token mean whatever the batch split. The Trainer
        # assumes exactly that for a model whose forward takes **kwargs: it neither divides the loss by the
        # accumulation steps nor averages over processes.
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
