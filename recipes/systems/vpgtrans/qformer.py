"""BLIP-like Q-Former pretraining (BLIP-2 stage 1): image-text contrastive, matching and image-grounded generation.

VPGTrans starts from "a Q-Former that has already undergone BLIP-like pretraining"; trained only through a
frozen toy LM, the Q-Former learned shapes but collapsed colours (name recall 0.12). This stage trains
the Q-Former against the frozen ViT with BLIP-2's three first-stage losses, using transformers' pieces
(`Blip2QFormerModel` with text input, `Blip2TextEmbeddings`, as in `Blip2ForImageTextRetrieval`):

- ITC: max over queries of the cosine between projected query outputs [B, Q, D] and the projected first text
  token [B, D], / learned temperature; symmetric cross-entropy over the batch.
- ITM: queries + text in one bidirectional sequence, a 2-way head on the mean of the query outputs; one hard
  negative text per image and one hard negative image per text, drawn from softmax(ITC similarity) with the
  positive masked out (as BLIP-2).
- ITG: queries + text with the multimodal causal mask (queries see queries; text sees all queries and earlier
  text), next-token loss on the text through a head tied to the word embeddings. BLIP-2 swaps [CLS] for a
  [DEC] token here; the toy tokenizer's BOS plays both parts.

The query-branch weights, `query_tokens` and the ViT post-LayerNorm (= LAVIS `ln_vision`) are saved under
`VPGTransModel` names (`qformer_pretrained.safetensors`), which `load_pretrained_qformer` puts into a model.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

QFORMER_WEIGHTS_NAME = "qformer_pretrained.safetensors"


class QFormerPretrainer(nn.Module):
    """ViT (frozen but its post-LayerNorm) + Q-Former with text input + ITC/ITM/ITG heads.

    forward(pixel_values [B, 3, H, W], input_ids [B, T], attention_mask [B, T]) -> dict of scalar losses
    (`loss` = itc + itm + itg).
    """

    def __init__(
        self, vision_model: nn.Module, qformer_config: Blip2QFormerConfig, num_query_tokens: int, embed_dim: int = 128
    ):
        super().__init__()
        if not qformer_config.use_qformer_text_input:
            raise ValueError("QFormerPretrainer needs qformer_config.use_qformer_text_input=True (the text branch).")
        if qformer_config.encoder_hidden_size != vision_model.config.hidden_size:
            raise ValueError(
                f"qformer_config.encoder_hidden_size={qformer_config.encoder_hidden_size} differs from the ViT hidden "
                f"size {vision_model.config.hidden_size}."
            )
        self.vision_model = vision_model
        for name, param in vision_model.named_parameters():
            param.requires_grad_(name.startswith("post_layernorm."))
        hidden = qformer_config.hidden_size
        std = qformer_config.initializer_range
        self.query_tokens = nn.Parameter(torch.randn(1, num_query_tokens, hidden) * std)
        self.embeddings = Blip2TextEmbeddings(qformer_config)
        nn.init.normal_(self.embeddings.word_embeddings.weight, std=std)
        nn.init.normal_(self.embeddings.position_embeddings.weight, std=std)
        self.qformer = Blip2QFormerModel(qformer_config)
        self.vision_projection = nn.Linear(hidden, embed_dim)
        self.text_projection = nn.Linear(hidden, embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.lm_bias = nn.Parameter(torch.zeros(qformer_config.vocab_size))
        self.temp = nn.Parameter(torch.tensor(0.07))

    def train(self, mode: bool = True):
        # The frozen ViT stays in eval mode (LAVIS `disabled_train`), whatever the Trainer asks.
        super().train(mode)
        self.vision_model.eval()
        return self

    def _image_embeds(self, pixel_values):
        return self.vision_model(pixel_values=pixel_values).last_hidden_state

    def _run(self, image_embeds, input_ids=None, mask=None):
        """Q-Former over [queries; text]; mask: 4D additive [B, 1, L, L] or 2D [B, L] (None = all ones)."""
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        embeds = self.embeddings(input_ids=input_ids, query_embeds=queries)
        return self.qformer(
            query_embeds=embeds,
            query_length=queries.shape[1],
            attention_mask=mask,
            encoder_hidden_states=image_embeds,
        ).last_hidden_state

    def forward(self, pixel_values, input_ids, attention_mask):
        image_embeds = self._image_embeds(pixel_values)
        batch, n_q = image_embeds.shape[0], self.query_tokens.shape[1]

        # ITC: queries alone vs text alone (the text pass has no queries: query_length 0).
        query_out = self._run(image_embeds)
        text_embeds = self.embeddings(input_ids=input_ids)
        text_out = self.qformer(
            query_embeds=text_embeds, query_length=0, attention_mask=attention_mask
        ).last_hidden_state
        image_feats = F.normalize(self.vision_projection(query_out), dim=-1)  # [B, Q, D]
        text_feat = F.normalize(self.text_projection(text_out[:, 0]), dim=-1)  # [B, D]
        temp = self.temp.clamp(0.001, 0.5)
        sim_i2t = torch.einsum("iqd,td->itq", image_feats, text_feat).max(-1).values / temp  # [B, B]
        sim_t2i = sim_i2t.t()
        targets = torch.arange(batch, device=sim_i2t.device)
        itc = (F.cross_entropy(sim_i2t, targets) + F.cross_entropy(sim_t2i, targets)) / 2

        # ITM with hard negatives drawn from the contrastive similarities.
        with torch.no_grad():
            eye = torch.eye(batch, dtype=torch.bool, device=sim_i2t.device)
            w_i2t = F.softmax(sim_i2t.float(), dim=1).masked_fill(eye, 0) + 1e-6 * (~eye)
            w_t2i = F.softmax(sim_t2i.float(), dim=1).masked_fill(eye, 0) + 1e-6 * (~eye)
            neg_text = torch.multinomial(w_i2t, 1).squeeze(1) if batch > 1 else targets
            neg_image = torch.multinomial(w_t2i, 1).squeeze(1) if batch > 1 else targets
        itm_images = torch.cat([image_embeds, image_embeds, image_embeds[neg_image]])
        itm_ids = torch.cat([input_ids, input_ids[neg_text], input_ids])
        itm_text_mask = torch.cat([attention_mask, attention_mask[neg_text], attention_mask])
        ones = torch.ones(itm_ids.shape[0], n_q, dtype=itm_text_mask.dtype, device=itm_text_mask.device)
        itm_out = self._run(itm_images, itm_ids, torch.cat([ones, itm_text_mask], dim=1))
        itm_logits = self.itm_head(itm_out[:, :n_q]).mean(dim=1)
        itm_labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(itm_logits.device)
        itm = F.cross_entropy(itm_logits, itm_labels)

        # ITG: multimodal causal mask, next-token loss on the text.
        mask = multimodal_causal_mask(attention_mask, n_q, dtype=query_out.dtype)
        itg_out = self._run(image_embeds, input_ids, mask)[:, n_q:]
        logits = F.linear(itg_out, self.embeddings.word_embeddings.weight, self.lm_bias)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        itg = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return {"loss": itc + itm + itg, "itc": itc.detach(), "itm": itm.detach(), "itg": itg.detach()}

    def vpgtrans_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a `VPGTransModel` takes from this stage, under its names (text branch dropped)."""
        # The text-branch FFN of each layer (`layer.i.intermediate` / `layer.i.output`) has no place in the
        # VL-LLM's Q-Former (LAVIS prunes it too); the attention blocks' own `.output` stay.
        text_ffn = re.compile(r"^encoder\.layer\.\d+\.(intermediate|output)\.")
        state = {f"qformer.{k}": v for k, v in self.qformer.state_dict().items() if not text_ffn.match(k)}
        state["query_tokens"] = self.query_tokens.detach()
        for k, v in self.vision_model.post_layernorm.state_dict().items():
            state[f"vision_model.post_layernorm.{k}"] = v
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def multimodal_causal_mask(text_mask: torch.Tensor, num_queries: int, dtype=torch.float32) -> torch.Tensor:
    """Additive mask [B, 1, Q+T, Q+T]: queries attend to queries only; text token t attends to every query and
    to text tokens <= t that are not padding. 0 = attend, dtype-min = blocked."""
    batch, length = text_mask.shape
    total = num_queries + length
    allowed = torch.zeros(batch, total, total, dtype=torch.bool, device=text_mask.device)
    allowed[:, :num_queries, :num_queries] = True
    allowed[:, num_queries:, :num_queries] = True
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=text_mask.device))
    allowed[:, num_queries:, num_queries:] = causal & text_mask.bool()[:, None, :]
    mask = torch.zeros(batch, 1, total, total, dtype=dtype, device=text_mask.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def load_pretrained_qformer(model: nn.Module, path) -> None:
    """Copy a pretrained Q-Former into `model`: `path` is this stage's `qformer_pretrained.safetensors`, or a model
    folder (e.g. a LAVIS `blip2_pretrained.pth` converted by `recipes/convert/lavis_blip2.py`) whose safetensors
    hold `qformer.*`, `query_tokens` and `vision_model.post_layernorm.*`. Raises ValueError when a query-branch
    weight is missing or mis-shaped."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"No Q-Former weights at {path} (a .safetensors file or a folder holding some).")
    wanted = ("qformer.", "query_tokens", "vision_model.post_layernorm.")
    state = {k: v for f in files for k, v in load_file(str(f)).items() if k.startswith(wanted)}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"Q-Former checkpoint {path} does not fit the model: shape mismatch for {wrong[:5]}.")
    missing = [k for k in own if k.startswith("qformer.") and k not in state] + [
        k for k in ("query_tokens",) if k not in state
    ]
    if missing:
        raise ValueError(f"Q-Former checkpoint {path} lacks {missing[:5]} (is it a Q-Former of another size?).")
    with torch.no_grad():
        for k, v in state.items():
            if k in own:
                own[k].copy_(v)


__all__ = ["QFORMER_WEIGHTS_NAME", "QFormerPretrainer", "load_pretrained_qformer", "multimodal_causal_mask"]
