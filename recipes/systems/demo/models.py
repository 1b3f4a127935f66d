"""The demo's two systems: a local checkpoint when given, else an untrained default that runs anywhere at once.

- PIN: `--pin PATH` loads a saved `PinForLocalization` (+ its `PinProcessor`). Without it, the committed toy base
  (`recipes/toy_checkpoints/vlm-caption`, a caption-only VPGTrans model) is wrapped with a freshly initialised
  insert: the base is real, the insert is not trained, so its boxes mean nothing.
- Groma: `--groma PATH` loads a `GromaForConditionalGeneration` folder (+ its `GromaProcessor`), e.g. a stage's
  `final/` written by `recipes/groma.py`. Without it, a tiny random Groma is built in memory (a toy Llama tokenizer
  with Groma's 114 tokens, a 4-block DINOv2 fed 112 px, a 2-layer Llama): it runs the whole pipeline (proposals,
  region tokens, generation, parsing) but grounds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import set_seed

from groundvlm.modeling import GromaForConditionalGeneration, PinForLocalization
from groundvlm.modeling.configuration_groma import GromaConfig
from groundvlm.processing import GromaImageProcessor, GromaProcessor, PinProcessor, add_groma_tokens
from groundvlm.processing.processing_groma import FIRST_ASSISTANT_TURN, FIRST_USER_TURN, SYSTEM_PROMPT
from groundvlm.recipes.systems.groma.data import GROUNDED_CAPTION_INSTRUCTION, REC_INSTRUCTIONS
from groundvlm.recipes.systems.groma.models import load_groma as load_groma_checkpoint
from groundvlm.recipes.systems.pin.models import load_base
from groundvlm.recipes.toyworld import COLOURS, COMMITTED_CAPTION_VLM, SHAPES, TEXTURES

UNTRAINED_PIN = "untrained PIN (random insert on the toy caption VLM): boxes are not meaningful"
UNTRAINED_GROMA = "untrained tiny Groma (random weights): answers and boxes are not meaningful"


@dataclass
class DemoSystem:
    """A loaded system: model (eval mode, on its device), processor, and a line saying what it is."""

    model: torch.nn.Module
    processor: object
    description: str
    trained: bool

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_pin(path: str | None = None, device: str | torch.device = "cpu", seed: int = 0) -> DemoSystem:
    """A saved PIN folder, or the committed toy base with an untrained insert (drawn after `set_seed(seed)`)."""
    if path:
        model = PinForLocalization.from_pretrained(path).to(device).eval()
        return DemoSystem(model, PinProcessor.from_pretrained(path), f"PIN from {path}", trained=True)
    base, base_processor = load_base(str(COMMITTED_CAPTION_VLM), torch.device(device))
    processor = PinProcessor.from_base_processor(base_processor)
    set_seed(seed)
    model = PinForLocalization.from_base(
        base,
        base_model_name_or_path=str(COMMITTED_CAPTION_VLM),
        grid_size=processor.grid_size,
        image_size=processor.image_size,
    )
    return DemoSystem(model.to(device).eval(), processor, UNTRAINED_PIN, trained=False)


def load_groma(path: str | None = None, device: str | torch.device = "cpu", seed: int = 0) -> DemoSystem:
    """A saved Groma folder, or a tiny random Groma (`tiny_random_groma(seed)`)."""
    if path:
        model, processor = load_groma_checkpoint(path)
        return DemoSystem(model.to(device).eval(), processor, f"Groma from {path}", trained=True)
    model, processor = tiny_random_groma(seed)
    return DemoSystem(model.to(device).eval(), processor, UNTRAINED_GROMA, trained=False)


def _tiny_groma_tokenizer():
    """A toy Llama tokenizer (`<unk>`, `<s>`, `</s>`) trained on Groma's prompt text and the toy world's words, with
    Groma's 114 tokens added."""
    from groundvlm.recipes.toyworld.tokenizers import train_tokenizer

    words = " ".join((*COLOURS, *SHAPES, *TEXTURES, "the", "on", "left", "right", "top", "bottom", "a", "an", "and"))
    corpus = [SYSTEM_PROMPT, FIRST_USER_TURN, FIRST_ASSISTANT_TURN, GROUNDED_CAPTION_INSTRUCTION, *REC_INSTRUCTIONS]
    tokenizer = train_tokenizer("llama", [*corpus, words] * 4, vocab_size=1_000_000)
    add_groma_tokens(tokenizer)
    return tokenizer


def tiny_random_groma(seed: int = 0) -> tuple[GromaForConditionalGeneration, GromaProcessor]:
    """A tiny, randomly initialised Groma and its processor (112 px input: an 8x8 patch grid, 16 image tokens,
    20 proposer queries); about 0.6M parameters, built in well under a second."""
    tokenizer = _tiny_groma_tokenizer()
    to_id = tokenizer.convert_tokens_to_ids
    config = GromaConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=518, patch_size=14),
        text_config=dict(
            model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=len(tokenizer), pad_token_id=to_id("[PAD]"),
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        ),
        image_size=112, proposer_d_model=32, proposer_encoder_layers=2, proposer_decoder_layers=2,
        proposer_attention_heads=4, proposer_ffn_dim=64, proposer_num_queries=20, proposer_dropout=0.0,
        region_gn_groups=4, region_pos_embed_dim=16, region_box_quirk=False, vision_cuda_graphs=False,
        pad_token_id=to_id("[PAD]"), image_token_id=to_id("<image>"), region_token_id=to_id("<region>"),
        refer_box_token_id=to_id("<refer_box>"), ground_box_token_id=to_id("<ground_box>"),
        refer_feat_token_id=to_id("<refer_feat>"), proxy_token_start_id=to_id("<r0>"), num_proxy_tokens=100,
    )  # fmt: skip
    set_seed(seed)
    model = GromaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    processor = GromaProcessor(
        GromaImageProcessor(size={"height": 112, "width": 112}),
        tokenizer,
        num_image_tokens=config.num_image_tokens,
        num_proxy_tokens=config.num_proxy_tokens,
    )
    return model, processor
