"""Groma's region proposer: a class-agnostic two-stage Deformable-DETR on one DINOv2 feature level.

Built from transformers' Deformable-DETR layers (`DeformableDetrEncoderLayer`, `DeformableDetrDecoderLayer`, whose
multi-scale deformable attention is pure PyTorch) plus what the released model does differently from stock
Deformable-DETR:
- a single feature level: the mean of the last DINOv2 block outputs, through Conv1x1 + channel LayerNorm;
- mixed query selection: the top-k encoder proposals give the anchors and the *positional* queries, the
  *content* queries are learned (`query_position_embeddings`);
- the decoder never updates its reference points: every layer samples around the initial anchors, and the box of
  the last layer L is sigma(D_L(h_L) + logit(sigma(D_{L-1}(h_{L-1}) + logit(anchor)))) ("look forward twice"
  without detach), with the reference's clamped inverse sigmoid;
- two objectness heads (COCO-style and SA-1B-style) fused as sigma(coco)^0.4 * sigma(sa1b)^0.6.
"""

import math

import torch
from torch import nn
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoderLayer,
    DeformableDetrEncoderLayer,
    DeformableDetrMLPPredictionHead,
    inverse_sigmoid,  # logit with the reference's clamping (eps 1e-5)
)


class GromaChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (ConvNeXt style, eps 1e-6, biased variance)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def sine_position_embedding(height: int, width: int, num_feats: int, device, temperature: float = 10000.0):
    """DETR's normalised sine embedding of an unpadded (height, width) grid -> (1, 2 * num_feats, H, W), y first."""
    scale = 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)[:, None].expand(height, width)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)[None, :].expand(height, width)
    y = (y - 0.5) / (height + 1e-6) * scale
    x = (x - 0.5) / (width + 1e-6) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)[None]


def proposal_position_embedding(proposal_logits: torch.Tensor, num_feats: int, temperature: float = 10000.0):
    """Sine embedding of sigmoid(proposal_logits): (B, Q, 4) -> (B, Q, 4 * num_feats), sin/cos interleaved."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=proposal_logits.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = proposal_logits.sigmoid()[..., None] * (2 * math.pi) / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(2)


class GromaRegionProposer(nn.Module):
    """Class-agnostic two-stage Deformable-DETR over a (B, C, H, W) feature map -> boxes and objectness.

    Parameter names follow the reference's `ddetr_transformer` (minus its aliased duplicates) so checkpoints map
    one to one; encoder/decoder layers are transformers' `DeformableDetr*Layer`s.
    """

    def __init__(self, config):
        super().__init__()
        d_model = config.proposer_d_model
        if config.patch_grid**2 < config.proposer_num_queries:
            raise ValueError(
                f"proposer_num_queries={config.proposer_num_queries} exceeds the {config.patch_grid**2} encoder "
                f"proposals of a {config.image_size}-px image; use fewer queries or a larger image_size"
            )
        self.num_queries = config.proposer_num_queries
        self.layer_config = DeformableDetrConfig(
            d_model=d_model,
            encoder_layers=config.proposer_encoder_layers,
            decoder_layers=config.proposer_decoder_layers,
            encoder_attention_heads=config.proposer_attention_heads,
            decoder_attention_heads=config.proposer_attention_heads,
            encoder_ffn_dim=config.proposer_ffn_dim,
            decoder_ffn_dim=config.proposer_ffn_dim,
            encoder_n_points=config.proposer_n_points,
            decoder_n_points=config.proposer_n_points,
            num_feature_levels=1,
            dropout=config.proposer_dropout,
            attention_dropout=0.0,
            activation_dropout=0.0,
            activation_function="relu",
            num_queries=config.proposer_num_queries,
            # No backbone is ever built from this config (DINOv2 features come in precomputed). Leaving the
            # timm-backbone defaults makes transformers (5.17) build a plain placeholder backbone config; with
            # `use_timm_backbone=False` it would instead look "resnet50" up on the Hub (a network call).
            attn_implementation="eager",  # the decoder self-attention of the reference is plain softmax attention
        )
        self.input_proj = nn.Sequential(
            nn.Conv2d(config.vision_config.hidden_size, d_model, kernel_size=1), GromaChannelLayerNorm(d_model)
        )
        self.level_embed = nn.Parameter(torch.zeros(1, d_model))
        self.encoder_layers = nn.ModuleList(
            DeformableDetrEncoderLayer(self.layer_config) for _ in range(config.proposer_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DeformableDetrDecoderLayer(self.layer_config) for _ in range(config.proposer_decoder_layers)
        )
        self.query_position_embeddings = nn.Embedding(config.proposer_num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
        self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        self.class_embed_enc = nn.Linear(d_model, 1)
        num_dec = config.proposer_decoder_layers
        self.class_embed_coco = nn.ModuleList(nn.Linear(d_model, 1) for _ in range(num_dec))
        self.class_embed_sa1b = nn.ModuleList(nn.Linear(d_model, 1) for _ in range(num_dec))
        # bbox_embed[0..L-1] refine decoder layers, bbox_embed[L] regresses the encoder proposals.
        self.bbox_embed = nn.ModuleList(
            DeformableDetrMLPPredictionHead(d_model, d_model, 4, num_layers=3) for _ in range(num_dec + 1)
        )

    def _encoder_proposals(self, memory: torch.Tensor, height: int, width: int):
        """Per-pixel proposals (logit space, +inf where invalid) and their object queries."""
        device = memory.device
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        wh = torch.full_like(cx, 0.05)  # 0.05 * 2**level, single level 0
        proposals = torch.stack((cx, cy, wh, wh), dim=-1).view(1, -1, 4)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float("inf"))
        object_query = memory.masked_fill(~valid, 0.0)
        return self.enc_output_norm(self.enc_output(object_query)), proposals.to(memory.dtype)

    def detect(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output detection pretraining supervises (FoundationVision/groma groma/model/ddetr_transformer.py).

        features: (B, C_vision, H, W). Returns, with L decoder layers, Q queries and H*W encoder proposals:
            boxes (L, B, Q, 4): normalised cxcywh of every decoder layer; layer l refines
                sigma(D_{l-1}(h_{l-1}) + logit(anchor)) (the anchor itself for l = 0), see the module docstring;
            logits_coco, logits_sa1b (L, B, Q): the two objectness heads of every layer;
            enc_logits (B, H*W), enc_boxes (B, H*W, 4): the per-pixel encoder proposals (binary targets).
        """
        batch_size = features.shape[0]
        source = self.input_proj(features)
        _, d_model, height, width = source.shape
        pos = sine_position_embedding(height, width, d_model // 2, source.device).to(source.dtype)
        pos = pos.flatten(2).transpose(1, 2) + self.level_embed[0].view(1, 1, -1)
        memory = source.flatten(2).transpose(1, 2)
        # Built on the device: `torch.tensor([[h, w]], device=...)` would be a blocking host-to-device copy (a host
        # sync, and an error inside CUDA-graph capture).
        spatial_shapes = torch.full((1, 2), height, dtype=torch.long, device=source.device)
        spatial_shapes[:, 1] = width
        level_start_index = spatial_shapes.new_zeros((1,))
        spatial_shapes_list = [(height, width)]

        ys = (torch.arange(height, dtype=source.dtype, device=source.device) + 0.5) / height
        xs = (torch.arange(width, dtype=source.dtype, device=source.device) + 0.5) / width
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        encoder_reference = torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1)
        encoder_reference = encoder_reference[None, :, None, :].expand(batch_size, -1, 1, -1)
        for layer in self.encoder_layers:
            memory = layer(
                memory,
                None,
                spatial_position_embeddings=pos,
                reference_points=encoder_reference,
                spatial_shapes=spatial_shapes,
                spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index,
            )

        # Mixed query selection: anchors and positional queries from the top encoder proposals.
        object_query, proposals = self._encoder_proposals(memory, height, width)
        enc_logits = self.class_embed_enc(object_query)[..., 0]
        enc_coord_logits = self.bbox_embed[-1](object_query) + proposals
        topk = torch.topk(enc_logits, self.num_queries, dim=1).indices
        anchor_logits = torch.gather(enc_coord_logits, 1, topk[..., None].expand(-1, -1, 4)).detach()
        anchors = anchor_logits.sigmoid()
        query_pos = proposal_position_embedding(anchor_logits.float(), d_model // 2).to(memory.dtype)
        query_pos = self.pos_trans_norm(self.pos_trans(query_pos))
        query_pos = query_pos[..., :d_model]
        hidden = self.query_position_embeddings.weight[None].expand(batch_size, -1, -1)

        # The reference never updates the reference points: every layer samples around the same anchors.
        decoder_reference = anchors[:, :, None]
        states = []
        for layer in self.decoder_layers:
            hidden = layer(
                hidden,
                object_queries_position_embeddings=query_pos,
                reference_points=decoder_reference,
                spatial_shapes=spatial_shapes,
                spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index,
                encoder_hidden_states=memory,
                encoder_attention_mask=None,
            )
            states.append(hidden)

        anchor_logit = inverse_sigmoid(anchors)
        boxes, reference = [], anchor_logit
        for layer, state in enumerate(states):
            delta = self.bbox_embed[layer](state)
            boxes.append((delta + reference).sigmoid())
            reference = inverse_sigmoid((delta + anchor_logit).sigmoid())  # what the next layer refines
        return {
            "boxes": torch.stack(boxes),
            "logits_coco": torch.stack([head(s)[..., 0] for head, s in zip(self.class_embed_coco, states)]),
            "logits_sa1b": torch.stack([head(s)[..., 0] for head, s in zip(self.class_embed_sa1b, states)]),
            "enc_logits": enc_logits,
            "enc_boxes": enc_coord_logits.sigmoid(),
        }

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: (B, C_vision, H, W) -> boxes (B, Q, 4) normalised cxcywh, objectness scores (B, Q) in [0, 1]:
        the last decoder layer's boxes and sigma(coco)^0.4 * sigma(sa1b)^0.6."""
        out = self.detect(features)
        score_coco = out["logits_coco"][-1].sigmoid()
        score_sa1b = out["logits_sa1b"][-1].sigmoid()
        return out["boxes"][-1], score_coco**0.4 * score_sa1b**0.6
