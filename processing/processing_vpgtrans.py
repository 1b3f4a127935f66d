"""VPGTrans processor: images + prompt (+ target) -> BLIP-2 inputs, with the reference's text handling.

Layout of one row (as transformers' Blip2Processor and LAVIS): `[<image>] * num_query_tokens` then the
tokenized text; the model replaces the placeholders with the projected Q-Former queries.

Reference text handling (LAVIS blip2_opt / VPGTrans blip2_llama):
- decoder-only LLMs (OPT, LLaMA): the training text is `prompt + target + "\n"`, tokenized with BOS, truncated
  to `max_txt_len` (32) text tokens, right-padded; labels are -100 on padding, the `<image>` positions and the
  prompt tokens. Generation stops on the "\n" id (`newline_token_id`). Batched generation pads on the left.
- encoder-decoder LLMs (T5): the prompt goes to the encoder, the target (with T5's own `</s>`) is the decoder
  label sequence; no "\n" is appended (T5's tokenizer cannot even represent it).
- a tokenizer without a pad token pads with its EOS (as the reference sets `pad_token = eos_token`).
"""

import torch
from transformers import AddedToken, BatchFeature, ProcessorMixin
from transformers.processing_utils import ProcessingKwargs, Unpack

# Zero-shot VQA prompts of the reference evaluation configs (LAVIS configs of the vqav2 / okvqa / gqa zero-shot evals): "Short answer:" is used for T5 only.
VQA_PROMPT_DECODER_ONLY = "Question: {} Answer:"
VQA_PROMPT_ENCODER_DECODER = "Question: {} Short answer:"


class VPGTransProcessorKwargs(ProcessingKwargs, total=False):
    # Lowest priority: the tokenizer's init kwargs, then call kwargs, override them. `max_length` defaults to
    # `max_txt_len` and `padding_side` to the layout the model needs (both set in `__call__`).
    _defaults = {"text_kwargs": {"padding": "longest", "truncation": True}}


class VPGTransProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor: a `BlipImageProcessor` (224 px, CLIP mean/std for the released models).
        tokenizer: the LLM tokenizer. `<image>` is added as a special token when missing (then the LLM
            embeddings must cover `len(tokenizer)`; `build_target_model` resizes them).
        num_query_tokens (`int`, defaults to 32): `<image>` placeholders per row (= `config.num_query_tokens`).
        max_txt_len (`int`, defaults to 32): text tokens kept per row (the reference's `max_txt_len`).
        is_encoder_decoder (`bool`, defaults to False): True for T5-style LLMs.
        text_end (`str`, defaults to "\n"): appended to decoder-only training targets; generation stops on it.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_query_tokens: int = 32,
        max_txt_len: int = 32,
        is_encoder_decoder: bool = False,
        text_end: str = "\n",
        chat_template=None,
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("VPGTransProcessor needs the LLM tokenizer.")
        if not isinstance(num_query_tokens, int) or num_query_tokens <= 0:
            raise ValueError(f"num_query_tokens must be a positive int, got {num_query_tokens!r}.")
        if not isinstance(max_txt_len, int) or max_txt_len <= 0:
            raise ValueError(f"max_txt_len must be a positive int, got {max_txt_len!r}.")
        image_token = getattr(tokenizer, "image_token", None) or "<image>"
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(image_token, normalized=False, special=True)], special_tokens=True)
        self.image_token = image_token
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first.")
            tokenizer.pad_token = tokenizer.eos_token
        self.num_query_tokens = num_query_tokens
        self.max_txt_len = max_txt_len
        self.is_encoder_decoder = is_encoder_decoder
        self.text_end = text_end
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        """Id of the `<image>` placeholder (set `config.image_token_index` to this)."""
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def newline_token_id(self) -> int | None:
        """Id generation stops on for decoder-only LLMs: the last id of `text_end` tokenized without specials
        (13 for LLaMA, 50118 for OPT, as the reference). None for encoder-decoder LLMs (they stop on EOS)."""
        if self.is_encoder_decoder:
            return None
        ids = self.tokenizer(self.text_end, add_special_tokens=False)["input_ids"]
        if not ids or ids[-1] == self.tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer cannot encode text_end={self.text_end!r} (got ids {ids}).")
        return ids[-1]

    def vqa_prompt(self, question: str) -> str:
        """The reference zero-shot VQA prompt for this LLM type (LAVIS zero-shot VQA eval configs)."""
        template = VQA_PROMPT_ENCODER_DECODER if self.is_encoder_decoder else VQA_PROMPT_DECODER_ONLY
        return template.format(question)

    def _tokenize(self, texts, padding_side, options):
        """Tokenize `texts` with the merged text kwargs `options` (padding, truncation, max_length, ...)."""
        options = dict(options)
        if not options.get("truncation") and options.get("padding") != "max_length":
            options["max_length"] = None  # max_length only truncates (or pads to it with padding="max_length")
        return self.tokenizer(texts, padding_side=padding_side, **options)

    def _merged_kwargs(self, kwargs: dict) -> tuple[dict, dict, str | None]:
        """(text kwargs, image kwargs, return_tensors) in transformers' priority order: call kwargs (flat or in
        `text_kwargs` / `images_kwargs` / `common_kwargs`), then the tokenizer's init kwargs, then the defaults.
        A `padding_side` stored in the tokenizer's config is not a default here: the side follows the layout."""
        tokenizer_init_kwargs = {k: v for k, v in self.tokenizer.init_kwargs.items() if k != "padding_side"}
        merged = self._merge_kwargs(VPGTransProcessorKwargs, tokenizer_init_kwargs=tokenizer_init_kwargs, **kwargs)
        text_kwargs, images_kwargs = dict(merged["text_kwargs"]), dict(merged["images_kwargs"])
        return_tensors = text_kwargs.pop("return_tensors") if "return_tensors" in text_kwargs else "pt"
        images_kwargs.pop("return_tensors", None)
        for key in ("return_mm_token_type_ids", "return_text_replacement_offsets"):
            text_kwargs.pop(key, None)
        text_kwargs.setdefault("max_length", None)
        if text_kwargs["max_length"] is None:
            text_kwargs["max_length"] = self.max_txt_len
        text_kwargs.setdefault("add_special_tokens", True)
        return text_kwargs, images_kwargs, return_tensors

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        text_target: str | list[str] | None = None,
        **kwargs: Unpack[VPGTransProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Args:
            images: one image per row (PIL / array / tensor, or a list of them).
            text: prompt(s); None means the empty prompt (captioning).
            text_target: target text(s) for training; gives `labels` (and `decoder_attention_mask` for T5).
            kwargs: as for transformers' processors, flat or grouped in `text_kwargs` / `images_kwargs` /
                `common_kwargs`; the tokenizer's init kwargs are the defaults. Text: `padding` (default "longest"),
                `truncation` (default True), `max_length` (text tokens per row, default `max_txt_len`; the
                placeholders are never truncated), `padding_side` (default "right" with targets (training) and
                "left" without (decoder-only generation)), `pad_to_multiple_of`, `add_special_tokens`,
                `return_tensors` (default "pt"). Images: the image processor's options (`do_rescale`, ...).

        Returns a `BatchFeature` with `input_ids` [B, Q + L], `attention_mask` [B, Q + L], `pixel_values`
        [B, 3, H, W] (when images are given) and, with `text_target`, `labels`: [B, Q + L] for decoder-only LLMs
        (-100 on placeholders, padding and prompt tokens), [B, T] for T5 (-100 on padding).
        """
        if images is None and text is None and text_target is None:
            raise ValueError("Give images and/or text.")
        options, images_kwargs, return_tensors = self._merged_kwargs(kwargs)
        padding_side = options.pop("padding_side", None)
        texts = self._as_list(text, "text")
        targets = self._as_list(text_target, "text_target")
        image_list = None if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
        if (
            image_list is not None
            and len(image_list) == 1
            and hasattr(image_list[0], "ndim")
            and image_list[0].ndim == 4
        ):
            image_list = list(image_list[0])
        n_rows = next((len(x) for x in (texts, targets, image_list) if x is not None), 0)
        if texts is None:
            texts = [""] * n_rows
        if targets is not None and len(targets) != len(texts):
            raise ValueError(f"Got {len(texts)} prompts but {len(targets)} targets.")
        if image_list is not None and len(image_list) != len(texts):
            raise ValueError(
                f"Image/text count mismatch: {len(image_list)} images for {len(texts)} text rows (one image per row)."
            )
        if padding_side is None:
            padding_side = "right" if targets is not None or self.is_encoder_decoder else "left"

        if self.is_encoder_decoder or targets is None:
            encoding = self._tokenize(texts, padding_side, options)
            input_ids, attention_mask = encoding["input_ids"], encoding["attention_mask"]
            labels = None
        else:
            input_ids, attention_mask, labels = self._decoder_only_training_text(texts, targets, padding_side, options)

        # Placeholders go in front of every row, after padding (so left padding sits between them and the
        # text, exactly like Blip2Processor and LAVIS, whose query embeddings are concatenated in front).
        n_q = self.num_query_tokens
        image_ids = [self.image_token_id] * n_q
        data = {
            "input_ids": [image_ids + list(row) for row in input_ids],
            "attention_mask": [[1] * n_q + list(row) for row in attention_mask],
        }
        if labels is not None:
            data["labels"] = [[-100] * n_q + row for row in labels]
        if targets is not None and self.is_encoder_decoder:
            target_encoding = self._tokenize(targets, "right", options)
            data["labels"] = [
                [tok if keep else -100 for tok, keep in zip(ids, mask)]
                for ids, mask in zip(target_encoding["input_ids"], target_encoding["attention_mask"])
            ]
            data["decoder_attention_mask"] = target_encoding["attention_mask"]
        if image_list is not None:
            pixel_values = self.image_processor(image_list, return_tensors="pt", **images_kwargs)["pixel_values"]
            data["pixel_values"] = pixel_values if return_tensors == "pt" else pixel_values.tolist()
        return BatchFeature(data, tensor_type=return_tensors)

    def _decoder_only_training_text(self, prompts, targets, padding_side, options):
        """`prompt + target + text_end` ids, mask and labels (lists of lists, without the placeholders)."""
        full = [self._join(p, t) + self.text_end for p, t in zip(prompts, targets)]
        encoding = self._tokenize(full, padding_side, options)
        labels = []
        for prompt, ids, mask in zip(prompts, encoding["input_ids"], encoding["attention_mask"]):
            row = [tok if keep else -100 for tok, keep in zip(ids, mask)]
            # As the reference: the prompt (tokenized alone, BOS included) is masked only when it is non-empty.
            # With an empty prompt the BOS stays a target, predicted from the last query position (LAVIS quirk,
            # kept so training matches the released models).
            if prompt:
                n_prompt = len(self.tokenizer(prompt, add_special_tokens=options["add_special_tokens"])["input_ids"])
                real = [i for i, keep in enumerate(mask) if keep]
                for i in real[:n_prompt]:
                    row[i] = -100
            labels.append(row)
        return encoding["input_ids"], encoding["attention_mask"], labels

    @staticmethod
    def _join(prompt: str, target: str) -> str:
        # The reference concatenates prompt and caption as given; a single space is inserted only where both
        # would otherwise run together ("Answer:" + "red"), which no reference prompt relies on.
        if prompt and target and not prompt[-1].isspace() and not target[0].isspace():
            return prompt + " " + target
        return prompt + target

    @staticmethod
    def _as_list(value, name):
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise TypeError(f"{name} must be a string or a list of strings, got {type(value).__name__}.")

    def post_process_generation(self, generated_ids, input_ids=None, skip_special_tokens: bool = True) -> list[str]:
        """Decode `generate` output [B, N] to answer strings: drops the echoed prompt (decoder-only LLMs return
        it; pass the `input_ids` given to `generate`), cuts at `text_end`, strips whitespace (as the reference)."""
        if isinstance(generated_ids, torch.Tensor):
            generated_ids = generated_ids.tolist()
        if input_ids is not None and not self.is_encoder_decoder:
            prompt_len = len(input_ids[0])
            generated_ids = [row[prompt_len:] for row in generated_ids]
        texts = self.tokenizer.batch_decode(generated_ids, skip_special_tokens=skip_special_tokens)
        if not self.is_encoder_decoder and self.text_end:
            texts = [t.split(self.text_end)[0] for t in texts]
        return [t.strip() for t in texts]

    @property
    def unused_input_names(self) -> list[str]:
        """The processor builds `input_ids` and `attention_mask` itself; BLIP-2 takes no `token_type_ids`."""
        return ["token_type_ids"]

    @property
    def model_input_names(self) -> list[str]:
        """The tokenizer's input names then the image processor's, as transformers' processors (the training
        outputs `labels` / `decoder_attention_mask` are targets, not model input names)."""
        names = [*self.tokenizer.model_input_names, *self.image_processor.model_input_names]
        return [name for name in dict.fromkeys(names) if name not in self.unused_input_names]


VPGTransProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["VQA_PROMPT_DECODER_ONLY", "VQA_PROMPT_ENCODER_DECODER", "VPGTransProcessor", "VPGTransProcessorKwargs"]
