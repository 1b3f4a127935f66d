"""Groma's region encoder: multi-level feature fusion (MLVLFuse) + multi-level RoIAlign extractor -> region tokens.

Adapted by the reference from GPT4RoI. Given the last DINOv2 block outputs of an image and its selected boxes, it
returns one LLM-sized token per box. The reference's box-format bug is reproduced behind
`config.region_box_quirk` (see `GromaRegionEncoder.roi_boxes`).
"""

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import roi_align


class GromaFuseConv(nn.Module):
    """3x3 conv without bias -> GroupNorm -> ReLU (mmcv ConvModule with a GN norm)."""

    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(num_groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gn(self.conv(x)))


class GromaMultiLevelFuse(nn.Module):
    """Coordinate channels + per-level 1x1 conv, then rounds of cross-level channel shuffling with a shared conv.

    Levels are ordered fine -> coarse. In each round a level keeps its first C/2 channels, takes channels
    [3C/4, C) of the next-coarser level and [C/2, 3C/4) of the next-finer level (the level itself at the ends),
    both bilinearly resized (align_corners) to its size, and every level goes through the same conv.
    """

    def __init__(self, channels: int, num_levels: int, num_rounds: int, num_groups: int):
        super().__init__()
        self.channels = channels
        self.num_levels = num_levels
        self.input_conv = nn.ModuleList(nn.Conv2d(channels + 2, channels, 1) for _ in range(num_levels))
        self.fuse_convs = nn.ModuleList(GromaFuseConv(channels, num_groups) for _ in range(num_rounds))

    @staticmethod
    def _coordinates(feature: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = feature.shape
        ys = torch.linspace(-1, 1, height, device=feature.device, dtype=feature.dtype)
        xs = torch.linspace(-1, 1, width, device=feature.device, dtype=feature.dtype)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((x, y))[None].expand(batch, -1, -1, -1)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = [
            conv(torch.cat((feat, self._coordinates(feat)), dim=1)) for conv, feat in zip(self.input_conv, features)
        ]
        keep, quarter = self.channels // 2, self.channels // 4
        for fuse_conv in self.fuse_convs:
            shuffled = []
            for level, feat in enumerate(features):
                coarser = features[min(level + 1, self.num_levels - 1)][:, keep + quarter :]
                finer = features[max(level - 1, 0)][:, keep : keep + quarter]
                size = feat.shape[-2:]
                # the reference resizes in fp32 whatever the model dtype
                coarser = F.interpolate(coarser.float(), size=size, mode="bilinear", align_corners=True)
                finer = F.interpolate(finer.float(), size=size, mode="bilinear", align_corners=True)
                shuffled.append(torch.cat((feat[:, :keep], coarser.to(feat.dtype), finer.to(feat.dtype)), dim=1))
            features = [fuse_conv(feat) for feat in shuffled]
        return features


class GromaRegionEncoder(nn.Module):
    """DINOv2 block outputs + boxes -> region tokens (one `text_hidden_size` vector per box).

    Parameter names follow the reference (`mlvl_fuse.*`, `roi_align.{pconvs,pos_embedd,flatten_linear,updims}`).
    """

    def __init__(self, config):
        super().__init__()
        channels = config.vision_config.hidden_size
        self.num_levels = config.region_feature_layers
        self.grid = config.patch_grid
        self.image_size = config.image_size
        self.patch_size = config.vision_config.patch_size
        self.roi_size = config.region_roi_size
        self.sampling_ratio = config.region_roi_sampling_ratio
        self.box_quirk = config.region_box_quirk
        self.mlvl_fuse = GromaMultiLevelFuse(
            channels, self.num_levels, config.region_fusion_rounds, config.region_gn_groups
        )
        self.roi_align = GromaRoIExtractor(
            channels, self.num_levels, self.roi_size, config.region_pos_embed_dim, config.text_config.hidden_size
        )

    def feature_sizes(self) -> list[int]:
        """Side of each level's map, fine -> coarse: grid * 2^(L-1), ..., grid (128, 64, 32 for the 7B model)."""
        return [self.grid * 2 ** (self.num_levels - 1 - level) for level in range(self.num_levels)]

    def spatial_scales(self) -> list[float]:
        """1 / stride of each level, as RoIAlign's spatial_scale."""
        if self.box_quirk:
            # The reference inherited GPT4RoI's strides 14/8, 14/4, 14/2: 2x too small for the resized maps.
            return [2 ** (self.num_levels - level) / self.patch_size for level in range(self.num_levels)]
        return [size / self.image_size for size in self.feature_sizes()]

    def roi_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Normalised cxcywh boxes (R, 4) -> the (R, 4) pixel boxes RoIAlign reads as (x1, y1, x2, y2)."""
        if self.box_quirk:
            # The reference passes cxcywh * image_size where RoIAlign expects corners (upstream #11, #21).
            return boxes * self.image_size
        cx, cy, w, h = boxes.unbind(-1)
        return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1) * self.image_size

    def fuse(self, hidden_states: list[torch.Tensor]) -> list[torch.Tensor]:
        """The box-independent part (most of the FLOPs): resize each level, coordinate channels, fusion rounds.

        hidden_states: the last `region_feature_layers` DINOv2 block outputs, each (B, grid*grid, C), CLS dropped.
        Returns the fused maps, fine -> coarse: (B, C, s, s) for s in `feature_sizes()`. It does not depend on the
        proposer, so it can run (or be captured in a CUDA graph) together with the vision side.
        """
        batch, _, channels = hidden_states[0].shape
        maps = [h.transpose(1, 2).reshape(batch, channels, self.grid, self.grid) for h in hidden_states]
        maps = [
            F.interpolate(m, size=(size, size), mode="bilinear", align_corners=True)
            for m, size in zip(maps, self.feature_sizes())
        ]
        return self.mlvl_fuse(maps)

    def extract(self, fused: list[torch.Tensor], boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """The box-dependent part: RoIAlign on the `fuse` output + pconvs + linear + pos-embedding + up-projection.

        fused: `fuse(...)`'s maps; boxes: per image (N_i, 4) normalised cxcywh. Returns per image (N_i, text_hidden).
        """
        return self.roi_align(fused, boxes, self.roi_boxes, self.spatial_scales(), self.sampling_ratio)

    def forward(self, hidden_states: list[torch.Tensor], boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """hidden_states: the last `region_feature_layers` DINOv2 block outputs, each (B, grid*grid, C), CLS dropped.
        boxes: per image (N_i, 4) normalised cxcywh. Returns per image (N_i, text_hidden_size): `extract(fuse(...))`."""
        return self.extract(self.fuse(hidden_states), boxes)


class GromaRoIExtractor(nn.Module):
    """RoIAlign (aligned, avg) on every level -> per-level 3x3 conv -> sum -> ReLU -> flatten -> Linear, plus a box
    position embedding, then the up-projection to the LLM width."""

    def __init__(self, channels: int, num_levels: int, roi_size: int, pos_dim: int, out_dim: int):
        super().__init__()
        self.roi_size = roi_size
        self.pconvs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_levels))
        self.pos_embedd = nn.Sequential(
            nn.Linear(4, pos_dim), nn.ReLU(), nn.LayerNorm(pos_dim),
            nn.Linear(pos_dim, channels), nn.ReLU(), nn.LayerNorm(channels),
        )  # fmt: skip
        self.flatten_linear = nn.Linear(channels * roi_size * roi_size, channels)
        self.updims = nn.Linear(channels, out_dim)

    def forward(self, maps, boxes, to_roi_boxes, spatial_scales, sampling_ratio) -> list[torch.Tensor]:
        counts = [len(b) for b in boxes]
        flat = torch.cat(boxes).to(maps[0].dtype)
        # Image index of every box, filled on the device: a tensor built from the host list of counts would be a
        # blocking host-to-device copy that waits for all queued GPU work.
        image_index = torch.cat([flat.new_full((n, 1), i, dtype=torch.float32) for i, n in enumerate(counts)])
        rois = torch.cat((image_index, to_roi_boxes(flat.float())), dim=1)
        pooled = 0
        for level, feature in enumerate(maps):
            # RoIAlign in fp32, as the reference; aligned=True accepts the negative extents the box quirk produces.
            roi = roi_align(
                feature.float(), rois, self.roi_size, spatial_scales[level], sampling_ratio, aligned=True
            ).to(feature.dtype)
            pooled = pooled + self.pconvs[level](roi)
        region = self.flatten_linear(F.relu(pooled).flatten(1)) + self.pos_embedd(flat)
        return list(self.updims(region).split(counts))
