"""Test-only, independent statement of the reference Groma's inference math (FoundationVision/Groma @ d3a95b6).

Written from the reference's math (FoundationVision/groma), on the *reference's* state-dict names, with plain torch ops and
none of our modeling code. Where the reference ran a library op that cannot run here, it is restated:
- transformers 4.32 DINOv2 position-embedding interpolation: bicubic (Keys, a = -0.75) written out by hand, with
  4.32's `scale_factor = (n + 0.1) / sqrt(N)` coordinate mapping;
- mmcv `nms(boxes, scores, iou, score_threshold, max_num)`: strict `score > thr` filter, greedy suppression of IoU > thr
  in descending score order, truncation to max_num;
- mmcv `RoIAlign(aligned=True, sampling_ratio=2, avg)`: written out per sample point (mmcv's bilinear rules), fed the
  reference's centre-format boxes x 448 as corners with strides 14/8, 14/4, 14/2;
- the never-updated decoder reference points and σ(Δ_L(h_L) + logit(σ(Δ_{L-1}(h_{L-1}) + logit(anchor)))) boxes;
- `torch.randperm` replaced by an injected permutation.
The LLM itself is transformers' Llama (the reference used `LlamaForCausalLM` too) fed the reference's dynamically
expanded sequence and split vocabulary (`new_input_embs`, `extra_lm_head`).
"""

import math

import torch
from torch.nn import functional as F

# ----------------------------------------------------------------------------- DINOv2 (transformers 4.32)


def _cubic(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def bicubic_resize_4_32(grid: torch.Tensor, out_size: int) -> torch.Tensor:
    """(C, S, S) -> (C, n, n) as torch bicubic (align_corners=False) with scale_factor=(n + 0.1) / S: output pixel i
    reads input coordinate (i + 0.5) * S / (n + 0.1) - 0.5, 4 taps with Keys weights, indices clamped to the border."""
    size = grid.shape[-1]
    scale = size / (out_size + 0.1)
    src = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5
    base = torch.floor(src)
    frac = src - base
    taps = torch.stack([base + k for k in (-1, 0, 1, 2)], -1).long().clamp(0, size - 1)  # (n, 4)
    weights = torch.stack([_cubic(frac - k) for k in (-1, 0, 1, 2)], -1)  # (n, 4)
    matrix = torch.zeros(out_size, size, dtype=torch.float64)
    matrix.scatter_add_(1, taps, weights)
    g = grid.double()
    return torch.einsum("ip,cpq,jq->cij", matrix, g, matrix).to(grid.dtype)


def dinov2_hidden_states(sd, prefix, pixel_values, num_heads, patch=14, eps=1e-6):
    """All hidden states (embeddings, then each block's output, no final LayerNorm): list of (B, 1 + n*n, C)."""
    w = sd[prefix + "embeddings.patch_embeddings.projection.weight"]
    x = F.conv2d(pixel_values, w, sd[prefix + "embeddings.patch_embeddings.projection.bias"], stride=patch)
    batch, channels, n, _ = x.shape
    x = x.flatten(2).transpose(1, 2)
    pos = sd[prefix + "embeddings.position_embeddings"]
    side = int(math.isqrt(pos.shape[1] - 1))
    patch_pos = bicubic_resize_4_32(pos[0, 1:].T.reshape(channels, side, side), n).reshape(channels, -1).T
    cls = sd[prefix + "embeddings.cls_token"].expand(batch, -1, -1)
    x = torch.cat((cls, x), 1) + torch.cat((pos[:, :1], patch_pos[None]), 1)
    states = [x]
    layer = 0
    while f"{prefix}encoder.layer.{layer}.norm1.weight" in sd:
        p = f"{prefix}encoder.layer.{layer}."

        def lin(name, t):
            return t @ sd[p + name + ".weight"].T + sd[p + name + ".bias"]

        h = F.layer_norm(x, (channels,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        q, k, v = (lin(f"attention.attention.{m}", h) for m in ("query", "key", "value"))
        q, k, v = (t.reshape(batch, -1, num_heads, channels // num_heads).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(channels // num_heads), -1) @ v
        att = lin("attention.output.dense", att.transpose(1, 2).reshape(batch, -1, channels))
        x = x + sd[p + "layer_scale1.lambda1"] * att
        h = F.layer_norm(x, (channels,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        x = x + sd[p + "layer_scale2.lambda1"] * lin("mlp.fc2", F.gelu(lin("mlp.fc1", h)))
        states.append(x)
        layer += 1
    return states


# ----------------------------------------------------------------------------- Deformable-DETR proposer


def _lin(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _ln(sd, name, x, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], eps)


def _inverse_sigmoid(x, eps=1e-5):
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _deformable_attention(sd, p, query, value_in, ref, height, width, heads, points):
    """One-level multi-scale deformable attention. ref: (B, Q, 2) points or (B, Q, 4) cxcywh boxes."""
    batch, nq, d = query.shape
    value = _lin(sd, p + "value_proj", value_in).reshape(batch, height, width, heads, d // heads)
    value = value.permute(0, 3, 4, 1, 2).reshape(batch * heads, d // heads, height, width)
    offsets = _lin(sd, p + "sampling_offsets", query).reshape(batch, nq, heads, points, 2)
    weights = torch.softmax(_lin(sd, p + "attention_weights", query).reshape(batch, nq, heads, points), -1)
    if ref.shape[-1] == 2:
        loc = ref[:, :, None, None, :] + offsets / torch.tensor([width, height], dtype=query.dtype)
    else:
        loc = ref[:, :, None, None, :2] + offsets / points * ref[:, :, None, None, 2:] * 0.5
    grid = (2 * loc - 1).permute(0, 2, 1, 3, 4).reshape(batch * heads, nq, points, 2)
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(batch, heads, d // heads, nq, points)
    out = (sampled * weights.permute(0, 2, 1, 3)[:, :, None]).sum(-1)  # (B, heads, dh, Q)
    return _lin(sd, p + "output_proj", out.permute(0, 3, 1, 2).reshape(batch, nq, d))


def _sine_embed(values, num_feats, temperature=10000.0):
    dim_t = torch.arange(num_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = values[..., None] / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), -1).flatten(-2)


def proposer(sd, vision_states, d_model, heads, points, num_queries, enc_layers, dec_layers, prefix="perceiver."):
    """Mean of the last 4 block outputs -> (boxes (B, Q, 4) cxcywh, fused scores (B, Q))."""
    x = torch.stack(vision_states[-4:]).mean(0)[:, 1:]
    batch, hw, channels = x.shape
    n = int(math.isqrt(hw))
    src = F.conv2d(
        x.transpose(1, 2).reshape(batch, channels, n, n),
        sd[prefix + "input_proj.0.0.weight"],
        sd[prefix + "input_proj.0.0.bias"],
    )
    mean = src.mean(1, keepdim=True)
    var = (src - mean).pow(2).mean(1, keepdim=True)
    src = (src - mean) / torch.sqrt(var + 1e-6)
    src = sd[prefix + "input_proj.0.1.weight"][:, None, None] * src + sd[prefix + "input_proj.0.1.bias"][:, None, None]
    t = prefix + "ddetr_transformer."
    ii = torch.arange(n, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(ii, ii, indexing="ij")
    scale = 2 * math.pi
    pos = torch.cat(
        (_sine_embed(ys / (n + 1e-6) * scale, d_model // 2), _sine_embed(xs / (n + 1e-6) * scale, d_model // 2)), -1
    )
    pos = pos.reshape(1, hw, d_model) + sd[t + "level_embed"][0]
    memory = src.flatten(2).transpose(1, 2)
    ref = torch.stack((xs / n, ys / n), -1).reshape(1, hw, 2).expand(batch, -1, -1)
    for i in range(enc_layers):
        p = f"{t}encoder.layers.{i}."
        att = _deformable_attention(sd, p + "self_attn.", memory + pos, memory, ref, n, n, heads, points)
        memory = _ln(sd, p + "self_attn_layer_norm", memory + att)
        memory = _ln(sd, p + "final_layer_norm", memory + _lin(sd, p + "fc2", F.relu(_lin(sd, p + "fc1", memory))))

    proposals = torch.stack((xs / n, ys / n, torch.full_like(xs, 0.05), torch.full_like(xs, 0.05)), -1).reshape(
        1, hw, 4
    )
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float("inf"))
    query = _ln(sd, t + "enc_output_norm", _lin(sd, t + "enc_output", memory.masked_fill(~valid, 0.0)))
    enc_class = _lin(sd, t + "class_embed_enc", query)[..., 0]

    def box_head(index, h):
        p = f"{t}bbox_embed.{index}.layers."
        return _lin(sd, p + "2", F.relu(_lin(sd, p + "1", F.relu(_lin(sd, p + "0", h)))))

    coord_logits = box_head(dec_layers, query) + proposals  # bbox_embed[-1] regresses encoder proposals
    top = enc_class.topk(num_queries, dim=1).indices
    anchor_logits = torch.gather(coord_logits, 1, top[..., None].expand(-1, -1, 4))
    anchors = anchor_logits.sigmoid()
    query_pos = _ln(
        sd,
        t + "pos_trans_norm",
        _lin(sd, t + "pos_trans", _sine_embed(anchor_logits.sigmoid() * scale, d_model // 2).flatten(2)),
    )
    query_pos = query_pos[..., :d_model]
    h = sd[t + "query_position_embeddings.weight"][None].expand(batch, -1, -1)
    states = []
    for i in range(dec_layers):
        p = f"{t}decoder.layers.{i}."
        qk = h + query_pos
        q, k, v = (
            _lin(sd, p + "self_attn.q_proj", qk),
            _lin(sd, p + "self_attn.k_proj", qk),
            _lin(sd, p + "self_attn.v_proj", h),
        )
        q, k, v = (z.reshape(batch, -1, heads, d_model // heads).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d_model // heads), -1) @ v
        att = _lin(sd, p + "self_attn.out_proj", att.transpose(1, 2).reshape(batch, -1, d_model))
        h = _ln(sd, p + "self_attn_layer_norm", h + att)
        # reference points are never updated: every layer samples around the anchors
        att = _deformable_attention(sd, p + "encoder_attn.", h + query_pos, memory, anchors, n, n, heads, points)
        h = _ln(sd, p + "encoder_attn_layer_norm", h + att)
        h = _ln(sd, p + "final_layer_norm", h + _lin(sd, p + "fc2", F.relu(_lin(sd, p + "fc1", h))))
        states.append(h)
    last = dec_layers - 1
    reference = anchors if last == 0 else (box_head(last - 1, states[last - 1]) + _inverse_sigmoid(anchors)).sigmoid()
    boxes = (box_head(last, states[last]) + _inverse_sigmoid(reference)).sigmoid()
    coco = _lin(sd, f"{t}class_embed_coco.{last}", states[last])[..., 0].sigmoid()
    sa1b = _lin(sd, f"{t}class_embed_sa1b.{last}", states[last])[..., 0].sigmoid()
    return boxes, coco**0.4 * sa1b**0.6


# ----------------------------------------------------------------------------- region selection (mmcv nms)


def _corners(b):
    return torch.stack((b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2), -1)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mmcv_nms(boxes_xyxy, scores, iou_threshold, score_threshold, max_num):
    """Indices kept by mmcv.ops.nms(..., score_threshold, max_num), in descending score order."""
    candidates = [i for i in range(len(scores)) if float(scores[i]) > score_threshold]
    candidates.sort(key=lambda i: -float(scores[i]))
    kept = []
    for i in candidates:
        if all(_iou(boxes_xyxy[i].tolist(), boxes_xyxy[j].tolist()) <= iou_threshold for j in kept):
            kept.append(i)
    return kept[:max_num]


def select_regions(boxes, scores, refer_boxes, permutation, nms_thres=0.6, score_thres=0.15, max_num=100):
    """One image: cat(pred, user boxes with score 1) -> mmcv nms -> permutation -> fallback to the top box."""
    all_boxes = torch.cat((boxes, refer_boxes))
    all_scores = torch.cat((scores, torch.ones(len(refer_boxes))))
    kept = mmcv_nms(_corners(all_boxes), all_scores, nms_thres, score_thres, max_num)
    if not kept:
        return all_boxes[int(all_scores.argmax())][None]
    kept = torch.tensor(kept)
    return all_boxes[kept][permutation(len(kept))]


# ----------------------------------------------------------------------------- region encoder (GPT4RoI-style)


def _bilinear_mmcv(feature, y, x):
    """mmcv roi_align bilinear_interpolate on (C, H, W) at float scalars y, x."""
    channels, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(channels)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * feature[:, y_low, x_low]
        + hy * lx * feature[:, y_low, x_high]
        + ly * hx * feature[:, y_high, x_low]
        + ly * lx * feature[:, y_high, x_high]
    )


def mmcv_roi_align(feature, roi, out_size, spatial_scale, sampling_ratio):
    """mmcv RoIAlign, aligned=True, avg pooling, one roi (x1, y1, x2, y2) on one (C, H, W) map -> (C, out, out)."""
    x1, y1, x2, y2 = (float(v) * spatial_scale - 0.5 for v in roi)
    bin_w, bin_h = (x2 - x1) / out_size, (y2 - y1) / out_size  # aligned mode keeps negative extents
    out = torch.zeros(feature.shape[0], out_size, out_size)
    count = max(sampling_ratio * sampling_ratio, 1)
    for ph in range(out_size):
        for pw in range(out_size):
            acc = torch.zeros(feature.shape[0])
            for iy in range(sampling_ratio):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
                for ix in range(sampling_ratio):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
                    acc = acc + _bilinear_mmcv(feature, y, x)
            out[:, ph, pw] = acc / count
    return out


def region_encoder(sd, vision_states, boxes_per_image, gn_groups, roi_size=14, image_size=448, patch=14):
    """Region tokens per image, as MLVLROIQueryModule: hidden_states[-3:] -> resize 4x/2x/1x -> fuse -> RoIAlign."""
    feats = [h[:, 1:] for h in vision_states[-3:]]
    batch, hw, channels = feats[0].shape
    n = int(math.isqrt(hw))
    feats = [f.transpose(1, 2).reshape(batch, channels, n, n) for f in feats]
    feats = [
        F.interpolate(f, size=(n * s, n * s), mode="bilinear", align_corners=True) for f, s in zip(feats, (4, 2, 1))
    ]
    p = "region_encoder.mlvl_fuse."
    levels = []
    for lvl, f in enumerate(feats):
        size = f.shape[-1]
        lin = torch.linspace(-1, 1, size)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        f = torch.cat((f, xx.expand(batch, 1, -1, -1), yy.expand(batch, 1, -1, -1)), 1)
        levels.append(F.conv2d(f, sd[f"{p}input_conv.{lvl}.weight"], sd[f"{p}input_conv.{lvl}.bias"]))
    half, quarter = channels // 2, channels // 4
    r = 0
    while f"{p}fuse_convs.{r}.conv.weight" in sd:
        new = []
        for lvl, f in enumerate(levels):
            top = levels[min(lvl + 1, 2)][:, half:][:, quarter:]
            down = levels[max(lvl - 1, 0)][:, half:][:, :quarter]
            size = f.shape[-2:]
            top = F.interpolate(top, size=size, mode="bilinear", align_corners=True)
            down = F.interpolate(down, size=size, mode="bilinear", align_corners=True)
            g = F.conv2d(torch.cat((f[:, :half], top, down), 1), sd[f"{p}fuse_convs.{r}.conv.weight"], padding=1)
            g = F.group_norm(g, gn_groups, sd[f"{p}fuse_convs.{r}.gn.weight"], sd[f"{p}fuse_convs.{r}.gn.bias"])
            new.append(F.relu(g))
        levels = new
        r += 1
    q = "region_encoder.roi_align."
    strides = [patch / 8, patch / 4, patch / 2]  # GPT4RoI's, 2x too small for these maps (reproduced)
    tokens = []
    for img, boxes in enumerate(boxes_per_image):
        rows = []
        for box in boxes:
            roi = box * image_size  # normalised cxcywh x 448, read by RoIAlign as x1, y1, x2, y2 (the quirk)
            fused = 0
            for lvl in range(3):
                pooled = mmcv_roi_align(levels[lvl][img], roi, roi_size, 1 / strides[lvl], 2)
                fused = fused + F.conv2d(
                    pooled[None], sd[f"{q}pconvs.{lvl}.weight"], sd[f"{q}pconvs.{lvl}.bias"], padding=1
                )
            feat = _lin(sd, q + "flatten_linear", F.relu(fused).flatten(1))[0]
            pe = _ln(sd, q + "pos_embedd.2", F.relu(_lin(sd, q + "pos_embedd.0", box)))
            pe = _ln(sd, q + "pos_embedd.5", F.relu(_lin(sd, q + "pos_embedd.3", pe)))
            rows.append(_lin(sd, q + "updims", feat + pe))
        tokens.append(torch.stack(rows))
    return tokens


# ----------------------------------------------------------------------------- token injection + LLM


def merge_2x2(last_state):
    """(B, 1 + n*n, C) -> (B, n*n/4, 4C): CLS dropped, (even r, even c), (odd r, even c), (even r, odd c), (odd r, odd c)."""
    x = last_state[:, 1:]
    batch, hw, channels = x.shape
    n = int(math.isqrt(hw))
    x = x.reshape(batch, n, n, channels)
    return torch.cat((x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]), -1).reshape(
        batch, -1, 4 * channels
    )


def expand_prompt(ids, num_image_tokens, num_regions, image_id, region_id, proxy_start):
    """The reference's dynamic expansion of one `<image>` and one `<region>` (batch 1, python lists)."""
    i, r = ids.index(image_id), ids.index(region_id)
    pairs = [t for j in range(num_regions) for t in (proxy_start + j, region_id)]
    return ids[:i] + [image_id] * num_image_tokens + ids[i + 1 : r] + pairs + ids[r + 1 :]


def llm_logits(sd, llama, ids, image_tokens, region_tokens, refer_boxes, selected, token_ids):
    """Logits of the reference LLM pass for one expanded prompt (list of ids) -> (len, base + new vocab)."""
    ids = torch.tensor(ids)
    refer_feats = None
    if len(refer_boxes):
        match = torch.tensor(
            [
                max(
                    range(len(selected)),
                    key=lambda j: _iou(_corners(rb[None])[0].tolist(), _corners(selected[j][None])[0].tolist()),
                )
                for rb in refer_boxes
            ]
        )
        ids = ids.clone()
        ids[ids == token_ids["refer_box"]] = token_ids["proxy_start"] + match
        refer_feats = region_tokens[match]
    base = sd["llm.model.embed_tokens.weight"]
    new = sd["new_input_embs.weight"]
    emb = torch.where(
        (ids >= len(base))[:, None], new[(ids - len(base)).clamp(min=0)], base[ids.clamp(max=len(base) - 1)]
    )
    emb = emb.clone()
    bridge = _lin(sd, "img_txt_bridge.2", F.gelu(_lin(sd, "img_txt_bridge.0", image_tokens)))
    emb[ids == token_ids["image"]] = bridge
    emb[ids == token_ids["region"]] = region_tokens
    if refer_feats is not None:
        emb[ids == token_ids["refer_feat"]] = refer_feats
    hidden = llama(inputs_embeds=emb[None]).last_hidden_state[0]
    return torch.cat((hidden @ sd["llm.lm_head.weight"].T, hidden @ sd["extra_lm_head.weight"].T), -1)
