"""Tiny base VLMs and tokenizers for the PIN tests, built in code (no downloads).

Vision towers take 224 px images with 56 px patches (4x4 = 16 patches), so the box grid runs at the paper's
224 px while the models stay tiny. Tokenizers are byte-level BPE (exact text round trip, like GPT-2/OPT).
"""

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

VOCAB = 320
IMAGE_SIZE = 224
PATCH = 56
_CORPUS = [
    "In the image is a cat located at [28,42,140,210]</s>",
    "In the image is an apple located at [0,14,224,224]</s>",
    "a red star and a striped blue ring, an orange, 0 14 28 42 56 70 84 98 112 126 140 154 168 182 196 210 224",
] * 20


def make_tokenizer(style: str = "opt") -> PreTrainedTokenizerFast:
    """Byte-level BPE with OPT (`</s>` as BOS/EOS) or LLaMA (`<s>`/`</s>`) conventions, plus `<image>`."""
    specials = ["<pad>", "</s>", "<s>", "<unk>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 16, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    bos = "</s>" if style == "opt" else "<s>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def tiny_blip2(tokenizer, cls=Blip2ForConditionalGeneration, config_cls=Blip2Config):
    """A BLIP-2 (or VPGTrans, via `cls`/`config_cls`) with a 2-layer OPT; vision tokens (17, 32)."""
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        initializer_range=0.02,
    )
    qformer = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        encoder_hidden_size=32,
        vocab_size=VOCAB,
    )
    text = dict(
        model_type="opt",
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = config_cls(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    return cls(config).eval()


def tiny_llava(tokenizer):
    """A LLaVA with a 2-layer CLIP vision tower and a 2-layer Llama; projector input (16, 32)."""
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=32,
    )
    text = dict(
        model_type="llama",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def blip_image_processor(size: int = IMAGE_SIZE) -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": size, "width": size})


def llava_processor(tokenizer) -> LlavaProcessor:
    """A LLaVA processor as released (shortest-edge resize + center crop), for `PinProcessor.from_base_processor`."""
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def tiny_pin_with_inputs(base: str = "blip2", batch: int = 2):
    """A fresh PIN on a tiny BLIP-2 (`base="blip2"`) or LLaVA (`"llava"`) base and its processor's inputs for `batch`
    (≤ 2) images of different sizes, each asking for one object."""
    from groundvlm.modeling import PinForLocalization
    from groundvlm.processing import PinProcessor

    if base == "llava":
        tok = make_tokenizer("llama")
        vlm, processor = tiny_llava(tok), PinProcessor.from_base_processor(llava_processor(tok))
    else:
        tok = make_tokenizer("opt")
        vlm = tiny_blip2(tok)
        processor = PinProcessor.from_base_processor(
            Blip2Processor(image_processor=blip_image_processor(), tokenizer=tok, num_query_tokens=4)
        )
    images = [Image.new("RGB", (300, 200), (200, 30, 30)), Image.new("RGB", (120, 160), (20, 200, 90))]
    return PinForLocalization.from_base(vlm), dict(processor(images=images[:batch], objects=["cat", "apple"][:batch]))
