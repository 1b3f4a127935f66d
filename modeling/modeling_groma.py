"""Groma (ECCV 2024): a grounded multimodal LLM with localized visual tokenization.

DINOv2 encodes a 448x448 image. Its last block gives 256 image tokens (2x2 merge -> Linear-GELU-Linear); a
class-agnostic Deformable-DETR proposes boxes, of which up to 100 are selected and encoded by a RoIAlign region
encoder into region tokens; the Llama LLM reads both and refers to regions through proxy tokens `<r0>` .. `<r99>`.

Static-length layout (what the processor builds, what makes batching, the KV cache and `generate` work):
    the first turn holds `num_image_tokens` (256) `<image>` tokens and `num_proxy_tokens` (100) pairs
    `<r_j><region>`, j = 0..99. The model writes the image tokens into the `<image>` slots and region token j into
    the `<region>` slot of pair j for j < N (N = number of selected regions of that image), and sets
    `attention_mask = 0` on both tokens of every pair j >= N. Position ids are `cumsum(attention_mask) - 1`, so
    the RoPE positions of every attended token equal those of the reference's dynamically expanded sequence
    (which holds exactly N pairs); masked pairs are as if absent.
Referring: `<roi><refer_box></roi><refer_feat>` with `refer_boxes` (normalised cxcywh per image). Each user box
enters region selection with score 1.0; the k-th `<refer_box>` of a sample becomes `<r_m>` and the k-th
`<refer_feat>` gets region token m, where m is the selected box of best IoU with user box k.
Region order is deterministic (NMS order = descending score); the reference's random permutation can be
re-introduced only through the `region_permutation` hook (used by parity tests).
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_convert, box_iou, nms
from transformers import AutoModelForCausalLM, Dinov2Model, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings
from transformers.utils import ModelOutput

from .configuration_groma import GromaConfig
from .deferred_stop import deferred_stop_check
from .groma_cuda_graphs import GromaVisionCudaGraphs
from .groma_proposer import GromaChannelLayerNorm, GromaRegionProposer
from .groma_region_encoder import GromaRegionEncoder
from .static_greedy import StaticGreedyDecoder, static_greedy_settings

# Score of the training-target boxes entering region selection (the reference's training forward).
GROUND_BOX_SCORE = 0.2


def center_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy (torchvision's `box_convert`)."""
    return box_convert(boxes, "cxcywh", "xyxy")


# The keyword that carries the KV cache between `generate`, `forward` and the LLM, and the output field that returns
# it: `past_key_values` in transformers up to 5.2x, `cache` after the rename (the old name then only warns). Groma
# follows the installed version, so `generate` hands the cache back on every step and no deprecation path is taken.
_GENERATION_KWARGS = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
CACHE_KWARG = "cache" if "cache" in _GENERATION_KWARGS else "past_key_values"
GENERATE_OUTPUT_CACHE_FIELD = (
    "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"
)


@dataclass
class GromaCausalLMOutputWithPast(CausalLMOutputWithPast):
    """Causal-LM output (its cache field named as the installed transformers names it) plus the vision outputs.

    region_boxes (`list[torch.Tensor]`): per image (N_i, 4) normalised xyxy in [0, 1], in slot order (row j is the
        box of `<r_j>`). Only set when the forward encoded images.
    image_hidden_states (`torch.Tensor`): (B, num_image_tokens, D) the projected image tokens written into the
        `<image>` slots. Only set when the forward encoded images.
    attention_mask (`torch.LongTensor`): the attention mask actually used (unused region pairs zeroed). Only set
        when the forward encoded images; continue generation from a returned cache with this mask.
    """

    region_boxes: list[torch.Tensor] | None = None
    image_hidden_states: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None


@dataclass
class GromaPreparedInputs(ModelOutput):
    """Everything the LLM prefill needs, computed once per image batch (see `prepare_multimodal_inputs`)."""

    input_ids: torch.LongTensor | None = None
    attention_mask: torch.LongTensor | None = None
    inputs_embeds: torch.Tensor | None = None
    region_boxes: list[torch.Tensor] | None = None
    image_hidden_states: torch.Tensor | None = None


class GromaDinov2Embeddings(Dinov2Embeddings):
    """DINOv2 embeddings whose position-embedding interpolation follows transformers 4.32 (the released model's).

    4.32 resized the 37x37 grid with `scale_factor = (n + 0.1) / 37` (output n x n); bicubic sampling then maps
    output pixel i to input (i + 0.5) * 37 / (n + 0.1) - 0.5, not (i + 0.5) * 37 / n - 0.5 as 5.x's `size=` does.
    """

    def __init__(self, config, legacy_interpolation: bool = True):
        super().__init__(config)
        self.legacy_interpolation = legacy_interpolation

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if not self.legacy_interpolation:
            return super().interpolate_pos_encoding(embeddings, height, width)
        num_patches = embeddings.shape[1] - 1
        num_positions = self.position_embeddings.shape[1] - 1
        if num_patches == num_positions and height == width:
            return self.position_embeddings
        side = int(num_positions**0.5)
        new_h = height // self.config.patch_size + 0.1
        new_w = width // self.config.patch_size + 0.1
        patch_pos = self.position_embeddings[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(), scale_factor=(new_h / side, new_w / side), mode="bicubic", align_corners=False
        ).to(self.position_embeddings.dtype)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, patch_pos.shape[1])
        return torch.cat((self.position_embeddings[:, :1], patch_pos), dim=1)


class GromaMultiModalProjector(nn.Module):
    """Linear-GELU-Linear from 2x2-merged DINOv2 tokens (4 * C) to the LLM width (the reference's img_txt_bridge)."""

    def __init__(self, config: GromaConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(4 * config.vision_config.hidden_size, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class GromaPreTrainedModel(PreTrainedModel):
    config_class = GromaConfig
    config: GromaConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "Dinov2Layer", "GromaRegionProposer", "GromaRegionEncoder"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, GromaChannelLayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, GromaRegionProposer):
            init.normal_(module.level_embed, mean=0.0, std=std)


class GromaForConditionalGeneration(GromaPreTrainedModel, GenerationMixin):
    """Groma: image + text (+ optional user boxes) -> text with proxy tokens `<r_j>` addressing selected regions.

    Submodules: `vision_model` (Dinov2Model), `multi_modal_projector`, `region_proposer`, `region_encoder`,
    `language_model` (LlamaForCausalLM with the 114 added tokens as native rows).
    """

    def __init__(self, config: GromaConfig):
        super().__init__(config)
        self.vision_model = Dinov2Model(config.vision_config)
        self.vision_model.embeddings = GromaDinov2Embeddings(
            config.vision_config, legacy_interpolation=config.vision_legacy_pos_interpolation
        )
        self.multi_modal_projector = GromaMultiModalProjector(config)
        self.region_proposer = GromaRegionProposer(config)
        self.region_encoder = GromaRegionEncoder(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        # Hook for parity tests only: maps N kept boxes to a permutation (LongTensor of N) applied after NMS, as the
        # reference's `torch.randperm`. None keeps the deterministic score order.
        self.region_permutation: Callable[[int], torch.Tensor] | None = None
        # CUDA graphs of the static-shape vision side (config.vision_cuda_graphs; a no-op off CUDA / in training).
        self._vision_graphs = GromaVisionCudaGraphs()
        self.post_init()
        # Fast decoding by default: a static KV cache, with which `generate` compiles the decoding step on a GPU (no
        # per-token shape changes or allocations). Saved in generation_config.json; `cache_implementation="dynamic"`
        # per call, or `model.generation_config.cache_implementation = None`, turns it off.
        self.generation_config.cache_implementation = "static"

    # ------------------------------------------------------------------ CUDA-graph bookkeeping
    def reset_cuda_graphs(self) -> None:
        """Drop the captured vision CUDA graphs (and their memory); the next CUDA inference call recaptures.

        Called automatically by `.to()`/`.cuda()`/`.half()`.. (`_apply`), `train(True)` and `load_state_dict`; call it
        yourself after replacing parameters or submodules of the vision side by other means."""
        graphs = self.__dict__.get("_vision_graphs")
        if graphs is not None:
            graphs.reset()

    def _apply(self, *args, **kwargs):
        self.reset_cuda_graphs()  # parameters may move or be replaced
        return super()._apply(*args, **kwargs)

    def train(self, mode: bool = True):
        if mode:
            self.reset_cuda_graphs()
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self.reset_cuda_graphs()  # `assign=True` replaces the parameter objects
        return super().load_state_dict(*args, **kwargs)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.language_model.set_output_embeddings(new_embeddings)

    def get_decoder(self):
        return self.language_model.get_decoder()

    # ------------------------------------------------------------------ vision side (once per image)
    def _check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Validate (B, 3, S, S) and cast to the vision dtype."""
        size = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"pixel_values must have shape (batch, 3, {size}, {size}) (RGB, resized by GromaImageProcessor); "
                f"got {tuple(pixel_values.shape)}"
            )
        return pixel_values.to(dtype=self.vision_model.embeddings.patch_embeddings.projection.weight.dtype)

    def encode_images(self, pixel_values: torch.Tensor):
        """pixel_values (B, 3, S, S) ImageNet-normalised -> (image_embeds (B, T, D), proposer boxes (B, Q, 4)
        normalised cxcywh, proposer scores (B, Q), region-encoder inputs: list of (B, grid^2, C)). Always eager."""
        return self._encode(self._check_pixel_values(pixel_values))

    def _encode(self, pixel_values: torch.Tensor):
        hidden_states = self.vision_model(pixel_values, output_hidden_states=True).hidden_states
        image_embeds, boxes, scores = self._project_and_propose(hidden_states)
        return image_embeds, boxes, scores, self._region_inputs(hidden_states)

    def _project_and_propose(self, hidden_states: tuple[torch.Tensor, ...]):
        """DINOv2 block outputs -> (image_embeds (B, T, D), proposal boxes (B, Q, 4) cxcywh, scores (B, Q))."""
        grid = self.config.patch_grid
        batch = hidden_states[-1].shape[0]
        # Image tokens: last block output (no final LayerNorm), CLS dropped, 2x2 merge in the reference's channel
        # order (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
        last = hidden_states[-1][:, 1:].reshape(batch, grid, grid, -1)
        merged = torch.cat(
            (last[:, 0::2, 0::2], last[:, 1::2, 0::2], last[:, 0::2, 1::2], last[:, 1::2, 1::2]), dim=-1
        ).reshape(batch, (grid // 2) ** 2, -1)
        image_embeds = self.multi_modal_projector(merged)
        proposer_input = torch.stack(hidden_states[-self.config.proposer_feature_layers :]).mean(0)[:, 1:]
        proposer_input = proposer_input.transpose(1, 2).reshape(batch, -1, grid, grid)
        boxes, scores = self.region_proposer(proposer_input)
        return image_embeds, boxes, scores

    def _region_inputs(self, hidden_states: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return [h[:, 1:] for h in hidden_states[-self.config.region_feature_layers :]]

    def _vision_side(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Everything before region selection, flat: (image_embeds, boxes, scores, *fused region-encoder maps).

        Static shapes and no host syncs, so it can be captured in a CUDA graph. The region encoder's fusion does not
        depend on the boxes and runs here, before the proposer's output is read on the host. Inside a capture, the
        fusion (large convolutions) and the proposer (many small deformable-attention launches) both only need the
        DINOv2 outputs, so the fusion goes on a side stream and the graph runs the two branches concurrently; the
        values are the same as run one after the other."""
        hidden_states = self.vision_model(pixel_values, output_hidden_states=True).hidden_states
        region_inputs = self._region_inputs(hidden_states)
        # The side stream is created in the capture's (non-capturing) warm-up calls, used in the capture itself.
        side = self._vision_graphs.side_stream(pixel_values.device) if pixel_values.is_cuda else None
        if side is not None and torch.cuda.is_current_stream_capturing():
            main = torch.cuda.current_stream(pixel_values.device)
            side.wait_stream(main)  # fork: the side branch starts after DINOv2
            with torch.cuda.stream(side):
                fused = self.region_encoder.fuse(region_inputs)
            image_embeds, boxes, scores = self._project_and_propose(hidden_states)
            main.wait_stream(side)  # join before the capture ends
        else:
            image_embeds, boxes, scores = self._project_and_propose(hidden_states)
            fused = self.region_encoder.fuse(region_inputs)
        return (image_embeds, boxes, scores, *fused)

    def perceive(self, pixel_values: torch.Tensor, region_maps: bool = True):
        """pixel_values (B, 3, S, S) -> (image_embeds (B, T, D), boxes (B, Q, 4) cxcywh, scores (B, Q), fused maps
        (list of (B, C, s, s), fine -> coarse)). Through the vision CUDA graphs where they apply (see
        `config.vision_cuda_graphs`), eagerly otherwise; the same values either way. `region_maps=False` lets the
        eager path skip the fusion (the maps are then None)."""
        pixel_values = self._check_pixel_values(pixel_values)
        outputs = None
        if self.config.vision_cuda_graphs:
            modules = (self.vision_model, self.multi_modal_projector, self.region_proposer, self.region_encoder)
            outputs = self._vision_graphs.run(self._vision_side, pixel_values, modules)
        if outputs is None:
            if not region_maps:
                image_embeds, boxes, scores, _ = self._encode(pixel_values)
                return image_embeds, boxes, scores, None
            outputs = self._vision_side(pixel_values)
        image_embeds, boxes, scores, *fused = outputs
        return image_embeds, boxes, scores, fused

    def _check_refer_boxes(self, refer_boxes, batch_size: int, device) -> list[torch.Tensor]:
        if refer_boxes is None:
            return [torch.zeros((0, 4), device=device) for _ in range(batch_size)]
        if not isinstance(refer_boxes, (list, tuple)) or len(refer_boxes) != batch_size:
            raise ValueError(f"refer_boxes must be a list of {batch_size} tensors of shape (n_i, 4), one per image")
        limit = min(self.config.num_proxy_tokens, self.config.max_region_num)
        checked = []
        for i, boxes in enumerate(refer_boxes):
            # Validated where the caller keeps them (the processor's are on the CPU: no device syncs), then moved.
            boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            if len(boxes) > limit:
                raise ValueError(
                    f"sample {i}: {len(boxes)} user boxes, but at most {limit} regions (proxy tokens) are available"
                )
            if not torch.isfinite(boxes).all():
                raise ValueError(f"sample {i}: refer_boxes contain NaN or inf")
            corners = center_to_corners(boxes)
            eps = 1e-6
            if (boxes[:, 2:] <= 0).any():
                raise ValueError(f"sample {i}: degenerate refer box (width or height <= 0): {boxes.tolist()}")
            if (corners < -eps).any() or (corners > 1 + eps).any():
                raise ValueError(
                    f"sample {i}: refer box outside the image; boxes must be normalised cxcywh within [0, 1]: "
                    f"{boxes.tolist()}"
                )
            checked.append(boxes.to(device))
        return checked

    def select_regions(
        self, boxes: torch.Tensor, scores: torch.Tensor, refer_boxes: list[torch.Tensor], ground_boxes=None
    ):
        """Per image: proposals + user boxes (score 1) + training-target boxes (`ground_boxes`, score 0.2 as the
        reference's training forward, groma/model/groma.py) -> score > threshold -> NMS -> top max_region_num.

        Returns per image (N_i, 4) normalised cxcywh, descending score (or `region_permutation` of it); if nothing
        survives, the single top-scoring box (the reference's fallback). The boxes are detached: selection is a
        discrete choice, and the reference runs its whole perceiver (DINOv2 + proposer) without gradient when training
        the LLM side, so no loss reaches the proposer through the region tokens' box embedding.
        """
        selected = []
        boxes = boxes.detach()
        for i in range(boxes.shape[0]):
            user = refer_boxes[i].to(boxes.dtype)
            target = ground_boxes[i].to(boxes.device, boxes.dtype) if ground_boxes is not None else user[:0]
            all_boxes = torch.cat((boxes[i], user, target))
            all_scores = torch.cat((
                scores[i], scores.new_ones(len(user)), scores.new_full((len(target),), GROUND_BOX_SCORE)
            ))  # fmt: skip
            candidates = torch.nonzero(all_scores > self.config.box_score_threshold).squeeze(1)
            keep = nms(
                center_to_corners(all_boxes[candidates]).float(),
                all_scores[candidates].float(),
                self.config.nms_threshold,
            )
            keep = candidates[keep[: self.config.max_region_num]]
            if len(keep) == 0:
                keep = all_scores.argmax().reshape(1)
            elif self.region_permutation is not None:
                keep = keep[self.region_permutation(len(keep)).to(keep.device)]
            selected.append(all_boxes[keep])
        return selected

    @torch.no_grad()
    def get_region_boxes(self, pixel_values: torch.Tensor, refer_boxes=None) -> list[torch.Tensor]:
        """The regions `<r_0>`.. refer to: per image (N_i, 4) normalised xyxy in [0, 1], in slot order."""
        _, boxes, scores, _ = self.perceive(pixel_values, region_maps=False)
        refer_boxes = self._check_refer_boxes(refer_boxes, boxes.shape[0], boxes.device)
        return [center_to_corners(b).clamp(0, 1) for b in self.select_regions(boxes, scores, refer_boxes)]

    # ------------------------------------------------------------------ text side
    @staticmethod
    def _slot_positions(mask: torch.Tensor, per_row: int) -> torch.Tensor:
        """(B, per_row) positions of the True entries of each row of `mask` (B, L), in order, for rows holding exactly
        `per_row` of them: a stable sort puts them first. Unlike `nonzero`, no host sync."""
        return torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :per_row]

    def _check_prompt(self, input_ids: torch.Tensor, refer_counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the static layout and the referring tokens with one host read; returns the `<region>` positions
        (B, num_proxy_tokens) and the `<refer_box>` mask (B, L)."""
        cfg = self.config
        image_mask = input_ids == cfg.image_token_id
        region_mask = input_ids == cfg.region_token_id
        refer_box_mask = input_ids == cfg.refer_box_token_id
        # (a prompt shorter than num_proxy_tokens fails the count check below; min() only keeps the shapes valid)
        region_pos = self._slot_positions(region_mask, min(cfg.num_proxy_tokens, input_ids.shape[1]))
        slots = torch.arange(region_pos.shape[1], device=input_ids.device)
        pairs_ok = (input_ids.gather(1, (region_pos - 1).clamp(min=0)) == cfg.proxy_token_start_id + slots).all(1)
        stats = torch.stack(
            (image_mask.sum(1), region_mask.sum(1), pairs_ok.long(), refer_box_mask.sum(1),
             (input_ids == cfg.refer_feat_token_id).sum(1)), dim=1,
        ).tolist()  # fmt: skip
        for name, column, per_row in (("<image>", 0, cfg.num_image_tokens), ("<region>", 1, cfg.num_proxy_tokens)):
            for i, row in enumerate(stats):
                if row[column] == 0:
                    raise ValueError(
                        f"sample {i}: the prompt has no {name} tokens (missing <image>/<region> in the text?)"
                    )
                if row[column] != per_row:
                    raise ValueError(
                        f"sample {i}: expected {per_row} {name} tokens, found {row[column]}; the prompt was built for "
                        "another config or its visual slots were truncated (do not truncate Groma prompts below "
                        "their visual prefix; use max_length=None)"
                    )
        if not all(row[2] for row in stats):
            raise ValueError("every <region> slot j must follow its proxy token <r_j> (pairs <r_j><region>, j=0..)")
        for i, (row, n_user) in enumerate(zip(stats, refer_counts)):
            if row[3] != n_user or row[4] != n_user:
                raise ValueError(
                    f"sample {i}: {n_user} refer_boxes but {row[3]} <refer_box> and {row[4]} <refer_feat> tokens; "
                    "they must match one to one"
                )
        return region_pos, refer_box_mask

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        refer_boxes: list[torch.Tensor] | None = None,
        ground_boxes: list[torch.Tensor] | None = None,
    ) -> GromaPreparedInputs:
        """Run the perceiver once and build the prefill: ids with `<refer_box>` resolved, the attention mask with
        unused region pairs zeroed, and the embeddings with image/region tokens written into their slots.

        `ground_boxes` (training): per image (n_i, 4) normalised cxcywh, one per `<ground_box>` token in order; they
        join region selection (score 0.2) and the k-th `<ground_box>` becomes `<r_m>`, m = the selected box of best
        IoU with box k (as the reference resolves answer boxes).

        Host reads: one for validating the prompt (before the vision work is queued, while the device is idle), then
        only those region selection needs (NMS keeps a data-dependent number of boxes)."""
        batch = input_ids.shape[0]
        if pixel_values.shape[0] != batch:
            raise ValueError(
                f"got {pixel_values.shape[0]} images for {batch} prompts; Groma takes one image per prompt"
            )
        cfg = self.config
        # Validate the referring inputs before the vision work is queued: bad input fails fast.
        refer_boxes = self._check_refer_boxes(refer_boxes, batch, pixel_values.device)
        region_pos, refer_box_mask = self._check_prompt(input_ids, [len(b) for b in refer_boxes])

        if ground_boxes is not None:
            ground_boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in ground_boxes]
            n_tokens = (input_ids == cfg.ground_box_token_id).sum(1).tolist()
            if len(ground_boxes) != batch or [len(b) for b in ground_boxes] != n_tokens:
                raise ValueError(
                    f"ground_boxes give {[len(b) for b in ground_boxes]} boxes per sample for {n_tokens} <ground_box> "
                    "tokens; they must match one to one"
                )
        image_embeds, selected, region_tokens = self._perceive_regions(pixel_values, refer_boxes, ground_boxes)
        if ground_boxes is not None and any(len(b) for b in ground_boxes):
            ground_mask = input_ids == cfg.ground_box_token_id
            match = input_ids.new_zeros(batch, max(len(b) for b in ground_boxes))
            for i, target in enumerate(ground_boxes):
                if len(target):
                    corners = center_to_corners(target.to(selected[i].device))
                    match[i, : len(target)] = box_iou(corners, center_to_corners(selected[i].float())).argmax(1)
            rank = (ground_mask.cumsum(1) - 1).clamp(min=0)
            input_ids = torch.where(ground_mask, cfg.proxy_token_start_id + match.gather(1, rank), input_ids)
        counts = [len(s) for s in selected]

        if any(len(b) for b in refer_boxes):
            # The k-th <refer_box> of a sample becomes <r_m>, m = the selected box of best IoU with user box k.
            match = input_ids.new_zeros(batch, max(len(b) for b in refer_boxes))
            refer_feats = []
            for i in range(batch):
                if len(refer_boxes[i]):
                    best = box_iou(center_to_corners(refer_boxes[i]), center_to_corners(selected[i].float())).argmax(1)
                    match[i, : len(best)] = best
                    refer_feats.append(region_tokens[i][best])
            rank = (refer_box_mask.cumsum(1) - 1).clamp(min=0)
            input_ids = torch.where(refer_box_mask, cfg.proxy_token_start_id + match.gather(1, rank), input_ids)
        else:
            refer_feats = []

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # Both tokens of every pair j >= N_i are masked out (scatter, not boolean indexing: no host sync).
        slots = torch.arange(cfg.num_proxy_tokens, device=input_ids.device)
        unused = slots[None, :] >= torch.tensor(counts).to(input_ids.device, non_blocking=True)[:, None]
        attention_mask = attention_mask.clone()
        for pos in (region_pos, region_pos - 1):
            attention_mask.scatter_(1, pos, attention_mask.gather(1, pos).masked_fill(unused, 0))

        inputs_embeds = self.get_input_embeddings()(input_ids)
        dtype = inputs_embeds.dtype
        image_mask = input_ids == cfg.image_token_id
        inputs_embeds = inputs_embeds.masked_scatter(image_mask[..., None], image_embeds.to(dtype))
        padded = inputs_embeds.new_zeros(batch, cfg.num_proxy_tokens, inputs_embeds.shape[-1])
        for i, tokens in enumerate(region_tokens):
            padded[i, : len(tokens)] = tokens.to(dtype)
        inputs_embeds = inputs_embeds.masked_scatter((input_ids == cfg.region_token_id)[..., None], padded)
        if refer_feats:
            refer_feat_mask = input_ids == cfg.refer_feat_token_id
            inputs_embeds = inputs_embeds.masked_scatter(refer_feat_mask[..., None], torch.cat(refer_feats).to(dtype))
        return GromaPreparedInputs(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            region_boxes=[center_to_corners(b).clamp(0, 1) for b in selected],
            image_hidden_states=image_embeds,
        )

    def _perceive_regions(self, pixel_values, refer_boxes, ground_boxes):
        """perceive -> select_regions -> region features, `config.vision_batch_size` images at a time.

        Returns (image_embeds (B, T, D), selected boxes per image, region features per image)."""
        step = self.config.vision_batch_size or len(pixel_values)
        if len(pixel_values) <= step:
            image_embeds, boxes, scores, fused = self.perceive(pixel_values)
            selected = self.select_regions(boxes, scores, refer_boxes, ground_boxes)
            return image_embeds, selected, self.region_encoder.extract(fused, selected)
        embeds, selected, tokens = [], [], []
        for start in range(0, len(pixel_values), step):
            part = slice(start, start + step)
            image_embeds, boxes, scores, fused = self.perceive(pixel_values[part])
            chosen = self.select_regions(
                boxes, scores, refer_boxes[part], None if ground_boxes is None else ground_boxes[part]
            )
            tokens.extend(self.region_encoder.extract(fused, chosen))
            selected.extend(chosen)
            # The vision graphs' outputs are static buffers the next chunk's replay overwrites: keep a copy.
            embeds.append(image_embeds.clone())
        return torch.cat(embeds), selected, tokens

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        refer_boxes: list[torch.Tensor] | None = None,
        ground_boxes: list[torch.Tensor] | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes=None,
        return_dict: bool | None = None,
        past_key_values=None,
        **kwargs,
    ) -> GromaCausalLMOutputWithPast | tuple:
        """input_ids (B, L) in the static layout; pixel_values (B, 3, S, S) (any float dtype); refer_boxes per image
        (n_i, 4) normalised cxcywh; labels (B, L) with -100 ignored (visual slots and unused pairs are ignored here
        whatever their label); ground_boxes (training) per image (n_i, 4) normalised cxcywh, the boxes of the
        `<ground_box>` tokens, which become the proxy tokens of their best-matching regions in ids and labels
        (see `prepare_multimodal_inputs`). Without pixel_values, runs the LLM alone on input_ids or inputs_embeds
        (decoding steps, text-only prompts, a continuation whose images are already in the cache).
        `cache` / `past_key_values` (either name): the LLM's KV cache.
        image_sizes (the processor's original (height, width) per image) is accepted so that `model(**inputs)` works,
        and ignored: boxes are normalised, only `post_process_grounding` needs pixel sizes."""
        cache = cache if cache is not None else past_key_values
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        prepared = None
        if pixel_values is not None:
            if inputs_embeds is not None:
                raise ValueError(
                    "pass input_ids, not inputs_embeds, with pixel_values: Groma writes the image and region tokens "
                    "into the <image>/<region> slots of the ids"
                )
            if input_ids is None:
                raise ValueError("input_ids are required with pixel_values (the image slots live in the prompt)")
            prepared = self.prepare_multimodal_inputs(
                input_ids, pixel_values, attention_mask, refer_boxes, ground_boxes
            )
            inputs_embeds, attention_mask = prepared.inputs_embeds, prepared.attention_mask
            if labels is not None:
                resolved = (input_ids == self.config.ground_box_token_id) & (labels != -100)
                labels = torch.where(resolved, prepared.input_ids, labels)
                visual = (input_ids == self.config.image_token_id) | (input_ids == self.config.region_token_id)
                labels = labels.masked_fill(visual | (attention_mask == 0), -100)
        elif inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (with pixel_values for a prompt holding an image) or inputs_embeds")
            # Only a prompt without a cache can be checked: with a cache, the ids are new tokens (any token the model
            # generates, `<image>` included, is plain text then) or a continuation whose images are already cached.
            # Skipping it there also keeps decoding steps free of host syncs.
            if cache is None and (input_ids == self.config.image_token_id).any():
                raise ValueError("the prompt holds <image> tokens but no pixel_values were given")
            inputs_embeds = self.get_input_embeddings()(input_ids)

        if position_ids is None and isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
            # Positions count attended tokens only, so masked region pairs and left padding take no RoPE position.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            return_dict=True,
            **{CACHE_KWARG: cache},
            **kwargs,
        )
        output = GromaCausalLMOutputWithPast(
            loss=outputs.loss,
            logits=outputs.logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            region_boxes=prepared.region_boxes if prepared is not None else None,
            image_hidden_states=prepared.image_hidden_states if prepared is not None else None,
            attention_mask=attention_mask if prepared is not None else None,
            **{CACHE_KWARG: outputs.get(CACHE_KWARG)},
        )
        return output if return_dict else output.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, *args, inputs_embeds=None, is_first_iteration=False, **kwargs):
        """transformers' preparation, plus: when the prefill gets more ids than prompt embeddings (assisted decoding
        appends its candidate tokens to the ids before the first forward), the extra ids are embedded and appended,
        so that the prefill verifies the candidates instead of silently dropping them."""
        if inputs_embeds is not None and is_first_iteration and input_ids.shape[1] > inputs_embeds.shape[1]:
            extra = self.get_input_embeddings()(input_ids[:, inputs_embeds.shape[1] :]).to(inputs_embeds.dtype)
            inputs_embeds = torch.cat((inputs_embeds, extra), dim=1)
        return super().prepare_inputs_for_generation(
            input_ids, *args, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )

    def _prepare_generation_config(self, generation_config, **kwargs):
        """transformers' merge of `generate` kwargs into the generation config, then: the model's default static
        cache gives way to a cache passed in (transformers raises on both), unless `cache_implementation` was asked
        for explicitly."""
        generation_config, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        user_cache = model_kwargs.get(CACHE_KWARG, model_kwargs.get("past_key_values")) is not None
        if user_cache and "cache_implementation" not in kwargs:
            generation_config.cache_implementation = None
        return generation_config, model_kwargs

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        refer_boxes: list[torch.Tensor] | None = None,
        image_sizes=None,
        inputs_embeds: torch.Tensor | None = None,
        defer_stop_check: bool = True,
        static_greedy: bool = True,
        **kwargs,
    ):
        """Encode the images once (one batched vision pass and prefill), then decode with the KV cache.

        Decoding uses the model's `generation_config` like any transformers model. Groma's default is a static KV
        cache (`cache_implementation="static"`), with which transformers compiles the decoding step on a GPU; results
        equal the dynamic cache's. `cache_implementation="dynamic"` (or passing your own cache) turns it off.
        On the current CUDA device the stop check after each token is read one step late (`defer_stop_check=True`,
        transformers' `DeferredStopCheck`, which it enables only on MPS): the host queues the next step while the GPU
        runs this one, instead of waiting on it every token; tokens and returned cache are the same, a streamer gets
        each token one step late (deferred_stop.py). Not with `synced_gpus`, which syncs every step anyway.

        Greedy calls that set only lengths, stop/pad ids and `return_dict_in_generate` (the default settings, as the
        demo and the evaluation use them) decode in Groma's own loop instead (`static_greedy=True`,
        static_greedy.py): the same tokens, but each step is one CUDA-graph replay of a compiled step on a GPU,
        with no Python between tokens. `static_greedy=False` keeps transformers' loop for every call. The loop keeps
        its static cache and graph for the next call of the same batch size and length (as a static cache is meant
        to be reused); `model.__dict__.pop("_static_greedy_decoder", None)` frees them.

        With `return_dict_in_generate=True` the output also carries `region_boxes` (per image (N_i, 4) normalised
        xyxy in slot order, `<r_j>` -> row j), `image_hidden_states` and `attention_mask` (the mask of `sequences`,
        unused region pairs zeroed). Returned sequences hold the prompt ids with `<refer_box>` resolved.

        To continue from a returned cache (`past_key_values=out.past_key_values`, or `cache=` in newer transformers),
        pass the longer ids with either the same `pixel_values` (the images are encoded again to rebuild the mask and
        the regions, and only the new tokens are prefilled) or, without pixel_values, `attention_mask` = the returned
        mask extended with ones for the new tokens. `image_sizes` is accepted and ignored, so that
        `model.generate(**processor(...))` works.
        """
        assisted = kwargs.get("assistant_model") is not None or kwargs.get("prompt_lookup_num_tokens") is not None
        if assisted and "cache_implementation" not in kwargs and kwargs.get("generation_config") is None:
            kwargs["cache_implementation"] = "dynamic"  # assisted decoding crops its cache; a static one cannot
        if pixel_values is None:
            if input_ids is not None:
                cache = kwargs.get(CACHE_KWARG, kwargs.get("past_key_values"))
                cached = cache.get_seq_length() if cache is not None else 0
                if (input_ids[:, cached:] == self.config.image_token_id).any():
                    raise ValueError(
                        "the prompt holds <image> tokens (beyond the given cache) but no pixel_values were given"
                    )
            with deferred_stop_check(defer_stop_check, kwargs):
                return super().generate(input_ids=input_ids, attention_mask=attention_mask,
                                        inputs_embeds=inputs_embeds, **kwargs)  # fmt: skip
        if inputs_embeds is not None:
            raise ValueError(
                "pass input_ids, not inputs_embeds, with pixel_values: Groma writes the image and region tokens into "
                "the <image>/<region> slots of the ids (inputs_embeds alone work for text-only generation)"
            )
        if input_ids is None:
            raise ValueError("input_ids are required with pixel_values (the image slots live in the prompt)")
        # (decided before the vision side runs: it needs only the prompt length, and the host is free now)
        settings = static_greedy_settings(self, kwargs, input_ids.shape[1]) if static_greedy else None
        prepared = self.prepare_multimodal_inputs(input_ids, pixel_values, attention_mask, refer_boxes)
        if settings is not None:
            outputs = self._static_greedy_generate(prepared, settings)
        else:
            with deferred_stop_check(defer_stop_check, kwargs):
                outputs = super().generate(
                    input_ids=prepared.input_ids,
                    attention_mask=prepared.attention_mask,
                    inputs_embeds=prepared.inputs_embeds,
                    **kwargs,
                )
        if isinstance(outputs, ModelOutput):
            sequences = outputs["sequences"]
            mask = prepared.attention_mask.repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
            outputs["region_boxes"] = prepared.region_boxes
            outputs["image_hidden_states"] = prepared.image_hidden_states
            outputs["attention_mask"] = torch.cat(
                (mask, mask.new_ones(sequences.shape[0], sequences.shape[1] - mask.shape[1])), dim=1
            )
        return outputs

    def _static_greedy_generate(self, prepared, settings):
        """`generate`'s output for a call `static_greedy_settings` accepted: the ids (prompt ids + new tokens) or,
        with `return_dict_in_generate`, a `GenerateDecoderOnlyOutput` with the ids and the cache."""
        decoder = self.__dict__.get("_static_greedy_decoder")
        if decoder is None or decoder.llm is not self.language_model:
            decoder = StaticGreedyDecoder(self.language_model)
            self.__dict__["_static_greedy_decoder"] = decoder  # not a submodule: nothing to save or move
        tokens, cache = decoder.generate(prepared.inputs_embeds, prepared.attention_mask, settings)
        sequences = torch.cat((prepared.input_ids, tokens), dim=1)
        if not settings.return_dict:
            return sequences
        return GenerateDecoderOnlyOutput(sequences=sequences, **{GENERATE_OUTPUT_CACHE_FIELD: cache})

    def save_pretrained(self, save_directory, *args, **kwargs):
        # One Auto class is kept per class by `register_for_auto_class`; users and trl load through several, so all
        # entries are written, and the folder loads with trust_remote_code like PIN's and VPGTrans's.
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update(
            {
                "AutoConfig": "configuration_groma.GromaConfig",
                "AutoModel": "modeling_groma.GromaForConditionalGeneration",
                "AutoModelForImageTextToText": "modeling_groma.GromaForConditionalGeneration",
            }
        )
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


GromaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")  # copies the code on save

__all__ = ["GromaForConditionalGeneration", "GromaPreTrainedModel"]
