"""Processor for Groma: special tokens, the Vicuna-v1 prompt with Groma's fixed first turn, static-length visual
slots, referring boxes, left-padded batches, and `post_process_grounding` (phrases with pixel boxes).

Facts reproduced from the reference (`FoundationVision/Groma`, spec §2):
- 114 tokens are added to the Llama vocabulary, as special tokens, in this order: `[PAD]` (the pad token),
  `<sep>`, `<img>`, `</img>`, `<roi>`, `</roi>`, `<p>`, `</p>`, `<image>`, `<region>`, `<refer_box>`,
  `<ground_box>`, `<refer_feat>`, `[grounding]`, `<r0>` .. `<r99>`; for Vicuna they get ids 32000 .. 32113.
- Prompt (conversation template `llava`, Vicuna-v1, separators " " after user turns and "</s>" after assistant
  turns), always starting with a fixed first exchange that carries the image and the regions:
  `{system} USER: Here is an image with region crops from it. Image: <image>. Regions: <region>. ASSISTANT: Thank
  you for the image! How can I assist you with it?</s>USER: {query} ASSISTANT:`.
  Grounded captioning prefixes the query with `[grounding]` (no space, as the reference's Flickr30k loader).
- The reference model expands `<image>` into 256 image slots and `<region>` into pairs `<r_j><region>` inside its
  forward. Here the processor does it up front (static layout: `num_image_tokens` `<image>` ids and
  `num_proxy_tokens` pairs), so batches pad normally and the model only fills/masks slots.
- A referred region is written `<roi><refer_box></roi><refer_feat>` (the literal `<refer>` is accepted as a
  shorthand and expanded to that), and its box travels separately as normalised cxcywh (`refer_boxes`).
- Answers look like `<p>a dog</p><roi><r4><r7></roi>` (grounded phrases) or `<roi><r21></roi></s>` (REC); the
  reference has no helper pairing phrases with boxes, `post_process_grounding` does it.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin

GROMA_SPECIAL_TOKENS = (
    "[PAD]",
    "<sep>",
    "<img>",
    "</img>",
    "<roi>",
    "</roi>",
    "<p>",
    "</p>",
    "<image>",
    "<region>",
    "<refer_box>",
    "<ground_box>",
    "<refer_feat>",
    "[grounding]",
)
NUM_PROXY_TOKENS = 100
GROMA_PROXY_TOKENS = tuple(f"<r{j}>" for j in range(NUM_PROXY_TOKENS))
# The reference adds exactly these 114 tokens, in this order (ids = base vocabulary size + position).
GROMA_ADDED_TOKENS = GROMA_SPECIAL_TOKENS + GROMA_PROXY_TOKENS

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
FIRST_USER_TURN = "Here is an image with region crops from it. Image: <image>. Regions: <region>."
FIRST_ASSISTANT_TURN = "Thank you for the image! How can I assist you with it?"
GROUNDING_PREFIX = "[grounding]"
REFER_PLACEHOLDER = "<refer>"
REFER_EXPANSION = "<roi><refer_box></roi><refer_feat>"
USER_SEP, ASSISTANT_SEP = " ", "</s>"
GENERATION_PROMPT = "ASSISTANT:"

# Jinja rendering of `build_groma_prompt` (the two must give identical strings; the tests check it). Content may
# be a string or a list of {"type": "text"|"image", ...} items: image items are not rendered because the image
# always sits in the fixed first turn; text items are joined with one space. `grounding=True` prefixes every user
# turn with `[grounding]` (as Groma Instruct does) unless it already starts with it.
GROMA_CHAT_TEMPLATE = (
    "{%- macro text_of(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{{- content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -}}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = text_of(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '" + SYSTEM_PROMPT.replace("'", "\\'") + "' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- system + ' USER: " + FIRST_USER_TURN + " ASSISTANT: " + FIRST_ASSISTANT_TURN + "</s>' -}}"
    "{%- for message in loop_messages -%}"
    "{%- set text = text_of(message['content']) -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if grounding is defined and grounding and not text.startswith('[grounding]') -%}"
    "{%- set text = '[grounding]' + text -%}{%- endif -%}"
    "{{- 'USER: ' + text + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' -}}{%- generation -%}{{- text + '</s>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- raise_exception('Groma conversations have system, user and assistant roles only, got ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def add_groma_tokens(tokenizer) -> int:
    """Add Groma's 114 tokens to a Llama tokenizer, in the reference's order, and make `[PAD]` the pad token.

    Idempotent: a tokenizer that already has them is left unchanged. Returns the number of tokens added.
    Raises ValueError if the tokens end up with non-contiguous ids (some of them already existed with other
    ids), because the model's extra embedding rows are addressed as `base + offset`.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in GROMA_ADDED_TOKENS if t not in vocab]
    added = tokenizer.add_tokens(list(GROMA_ADDED_TOKENS), special_tokens=True) if missing else 0
    tokenizer.pad_token = "[PAD]"
    ids = tokenizer.convert_tokens_to_ids(list(GROMA_ADDED_TOKENS))
    if ids != list(range(ids[0], ids[0] + len(GROMA_ADDED_TOKENS))):
        raise ValueError(
            "Groma's added tokens must have contiguous ids in the reference order ([PAD] .. <r99>); this tokenizer "
            f"already held some of them elsewhere (ids {ids[:3]} .. {ids[-1]}). Start from the plain Llama tokenizer."
        )
    return added


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(item["text"] for item in content if item.get("type") == "text")


def build_groma_prompt(conversation, grounding: bool = False, add_generation_prompt: bool = True) -> str:
    """Build the reference prompt string (identical to rendering `GROMA_CHAT_TEMPLATE`).

    Args:
        conversation: a user query (str), or a list of messages `{"role": "system"|"user"|"assistant",
            "content": str | list[{"type": "text", "text": ...} | {"type": "image"}]}`.
        grounding: prefix every user turn with `[grounding]` (grounded captioning / Groma Instruct style).
        add_generation_prompt: end with `ASSISTANT:` so the model answers next.

    Example: `build_groma_prompt("What is <refer>?")` ->
        "{SYSTEM_PROMPT} USER: Here is an image with region crops from it. Image: <image>. Regions: <region>.
        ASSISTANT: Thank you for the image! How can I assist you with it?</s>USER: What is <refer>? ASSISTANT:"
    """
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else list(conversation)
    system = SYSTEM_PROMPT
    if messages and messages[0]["role"] == "system":
        system, messages = _text_of(messages[0]["content"]), messages[1:]
    prompt = f"{system} USER: {FIRST_USER_TURN} ASSISTANT: {FIRST_ASSISTANT_TURN}{ASSISTANT_SEP}"
    for message in messages:
        text = _text_of(message["content"])
        if message["role"] == "user":
            if grounding and not text.startswith(GROUNDING_PREFIX):
                text = GROUNDING_PREFIX + text
            prompt += f"USER: {text}{USER_SEP}"
        elif message["role"] == "assistant":
            prompt += f"ASSISTANT: {text}{ASSISTANT_SEP}"
        else:
            raise ValueError(f"Groma conversations have system, user and assistant roles only, got {message['role']!r}")
    if add_generation_prompt:
        prompt += GENERATION_PROMPT
    return prompt


class GromaProcessorKwargs(ProcessingKwargs, total=False):
    # Left padding: decoder-only batched generation must end every prompt at the same position.
    _defaults = {"text_kwargs": {"padding": True, "padding_side": "left"}, "images_kwargs": {}}


class GromaProcessor(ProcessorMixin):
    r"""
    Groma processor: `GromaImageProcessor` + a Llama tokenizer holding Groma's 114 added tokens.

    `processor(images, text, refer_boxes=None, **kwargs)` takes one image per prompt; each prompt must contain the
    fixed first turn (one `<image>` and one `<region>`), as built by `apply_chat_template` / `build_groma_prompt`.

    Args:
        image_processor (`GromaImageProcessor`): resizes to 448x448 and normalises.
        tokenizer (Llama tokenizer): must hold the tokens of `add_groma_tokens`.
        num_image_tokens (`int`, defaults to 256): `<image>` slots (16x16 merged DINOv2 patches at 448 px).
        num_proxy_tokens (`int`, defaults to 100): `<r_j><region>` slot pairs (max regions per image).
        chat_template (`str`, *optional*): defaults to `GROMA_CHAT_TEMPLATE`.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens: int = 256,
        num_proxy_tokens: int = NUM_PROXY_TOKENS,
        chat_template=None,
        **kwargs,
    ):
        if not 1 <= num_proxy_tokens <= NUM_PROXY_TOKENS:
            raise ValueError(f"num_proxy_tokens must be in 1..{NUM_PROXY_TOKENS} (<r0>..<r99>), got {num_proxy_tokens}")
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
        self.num_image_tokens = num_image_tokens
        self.num_proxy_tokens = num_proxy_tokens
        super().__init__(image_processor, tokenizer, chat_template=chat_template or GROMA_CHAT_TEMPLATE, **kwargs)
        if tokenizer is not None:
            unknown = [t for t in GROMA_ADDED_TOKENS if t not in tokenizer.get_vocab()]
            if unknown:
                raise ValueError(
                    f"the tokenizer lacks {len(unknown)} of Groma's special tokens (e.g. {unknown[:3]}); call "
                    "add_groma_tokens(tokenizer) first (and give the model matching embedding rows)"
                )
            to_id = tokenizer.convert_tokens_to_ids
            self.pad_token_id = to_id("[PAD]")
            self.image_token_id = to_id("<image>")
            self.region_token_id = to_id("<region>")
            self.refer_box_token_id = to_id("<refer_box>")
            self.refer_feat_token_id = to_id("<refer_feat>")
            self.ground_box_token_id = to_id("<ground_box>")
            self.proxy_token_ids = to_id(list(GROMA_PROXY_TOKENS))
        # Everything post_process_grounding recognises: Groma's tokens plus the tokenizer's own specials.
        extra = [
            t
            for t in (
                getattr(tokenizer, "bos_token", None),
                getattr(tokenizer, "eos_token", None),
                getattr(tokenizer, "unk_token", None),
            )
            if t
        ]
        tags = sorted(set(GROMA_SPECIAL_TOKENS) | set(extra), key=len, reverse=True)
        self._tag_pattern = re.compile("(<r[0-9]+>|" + "|".join(re.escape(t) for t in tags) + ")")

    # ------------------------------------------------------------------------------------------------ inputs
    def __call__(self, images=None, text=None, refer_boxes=None, videos=None, audio=None, **kwargs) -> BatchFeature:
        """Prepare a batch: one image and one prompt per sample, optional referring boxes.

        Args:
            images: one image or a list with one image per prompt (PIL, or uint8 HWC/CHW arrays/tensors). A nested
                list (as `apply_chat_template` passes) must hold exactly one image per prompt.
            text: one prompt or a list, each with exactly one `<image>` and one `<region>` (the fixed first turn).
                Referred regions are written `<refer>` or `<roi><refer_box></roi><refer_feat>`.
            refer_boxes: per image, pixel `(x1, y1, x2, y2)` boxes on the ORIGINAL image, shape (n_i, 4), in the
                order of the prompt's referring placeholders (None or empty for none). With one image, a bare
                (n, 4) is accepted.
            kwargs: tokenizer/image-processor options (`padding` (default True), `padding_side` (default "left"),
                `truncation`, `max_length`, `pad_to_multiple_of`, `add_special_tokens`, `return_tensors`, ...).

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` (B, L); `pixel_values` (B, 3, 448, 448);
            `image_sizes` (B, 2) original (height, width); and, when `refer_boxes` was given, `refer_boxes`:
            list of B float32 tensors (n_i, 4), normalised cxcywh in [0, 1] (the reference's convention).
            `BatchFeature.to(device)` leaves that list where it is; move its tensors with the model.
        """
        if videos is not None or audio is not None:
            raise ValueError("GromaProcessor handles images and text only")
        if text is None:
            raise ValueError(
                "GromaProcessor needs `text` (prompts built with apply_chat_template / build_groma_prompt)"
            )
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("`text` must be a string or a non-empty list of strings")
        if images is None:
            raise ValueError("Groma needs one image per prompt; `images` is missing")
        images = self._one_image_per_prompt(images, len(texts))
        boxes = self._refer_boxes_per_prompt(refer_boxes, len(texts))

        # The tokenizer's init kwargs are defaults (as in transformers' processors), except a `padding_side` stored in
        # its config: checkpoints trained LLaVA-style store "right", and batched generation needs left padding.
        tokenizer_init_kwargs = {k: v for k, v in self.tokenizer.init_kwargs.items() if k != "padding_side"}
        output_kwargs = self._merge_kwargs(GromaProcessorKwargs, tokenizer_init_kwargs=tokenizer_init_kwargs, **kwargs)
        text_kwargs = dict(output_kwargs["text_kwargs"])
        images_kwargs = dict(output_kwargs["images_kwargs"])
        # Tensors by default (the model is torch-only); the tokenizer returns lists that the slot check reads.
        return_tensors = text_kwargs.pop("return_tensors") if "return_tensors" in text_kwargs else "pt"
        images_kwargs.pop("return_tensors", None)

        image_inputs = self.image_processor(images, return_tensors="pt", **images_kwargs)
        sizes = [tuple(int(v) for v in hw) for hw in image_inputs["image_sizes"].tolist()]
        normalised = [self._normalise_refer_boxes(b, size, i) for i, (b, size) in enumerate(zip(boxes, sizes))]

        # chat-template assistant masks map character spans of the rendered prompt onto the expanded one
        want_offsets = bool(
            text_kwargs.pop("return_text_replacement_offsets", False)
            or output_kwargs.get("return_text_replacement_offsets", False)
        )
        text_kwargs.pop("return_mm_token_type_ids", None)
        expanded, replacements = zip(
            *(self._expand_prompt(t, i, len(n)) for i, (t, n) in enumerate(zip(texts, normalised)))
        )
        expanded = list(expanded)
        text_inputs = self.tokenizer(expanded, **text_kwargs)
        for i, ids in enumerate(text_inputs["input_ids"]):
            self._check_slots(list(ids), i, len(normalised[i]), expanded[i], text_kwargs)

        data = {**text_inputs, "pixel_values": image_inputs["pixel_values"], "image_sizes": image_inputs["image_sizes"]}
        out = BatchFeature(data=data, tensor_type=return_tensors)
        if refer_boxes is not None:
            out["refer_boxes"] = normalised
        if want_offsets:
            out["text_replacement_offsets"] = list(replacements)
        return out

    @staticmethod
    def _one_image_per_prompt(images, batch_size: int) -> list:
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)):
            images = [images]
        flat = []
        for i, entry in enumerate(images):
            if isinstance(entry, (list, tuple)):
                if len(entry) != 1:
                    raise ValueError(f"Groma takes exactly one image per prompt; prompt {i} has {len(entry)}")
                entry = entry[0]
            if isinstance(entry, (np.ndarray, torch.Tensor)) and entry.ndim != 3:
                raise ValueError(
                    f"image {i} has shape {tuple(entry.shape)}; Groma expects RGB images (H, W, 3) or (3, H, W) "
                    "(convert grayscale/alpha images to RGB first)"
                )
            flat.append(entry)
        if len(flat) != batch_size:
            raise ValueError(
                f"Groma takes exactly one image per prompt: got {len(flat)} images for {batch_size} prompts"
            )
        return flat

    @staticmethod
    def _refer_boxes_per_prompt(refer_boxes, batch_size: int) -> list:
        if refer_boxes is None:
            return [None] * batch_size

        def is_box_list(x):  # a per-image entry: None or something 2-D
            return (
                x is None or np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=object).ndim == 2
            )

        if (
            isinstance(refer_boxes, (list, tuple))
            and len(refer_boxes) == batch_size
            and all(is_box_list(b) or (isinstance(b, (list, tuple)) and len(b) == 0) for b in refer_boxes)
        ):
            return list(refer_boxes)
        if batch_size == 1:
            return [refer_boxes]
        raise ValueError(
            f"refer_boxes must be a list with one (n_i, 4) entry (or None) per prompt; got {type(refer_boxes).__name__} "
            f"for {batch_size} prompts"
        )

    def _normalise_refer_boxes(self, boxes, size: tuple[int, int], i: int) -> torch.Tensor:
        """Validate pixel xyxy boxes of image `i` (size (h, w)) and return normalised cxcywh, float32 (n, 4)."""
        if boxes is None or (isinstance(boxes, (list, tuple)) and len(boxes) == 0):
            return torch.zeros(0, 4)
        try:
            b = torch.as_tensor(
                np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64)
            )
        except (TypeError, ValueError) as err:
            raise TypeError(f"refer_boxes for image {i} must be numbers of shape (n, 4): {err}") from None
        if b.ndim == 1 and b.numel() == 4:
            b = b[None]
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"refer_boxes for image {i} must have shape (n, 4) in pixel xyxy, got {tuple(b.shape)}")
        if b.shape[0] > self.num_proxy_tokens:
            raise ValueError(
                f"image {i} has {b.shape[0]} refer_boxes but Groma addresses at most {self.num_proxy_tokens} regions "
                f"(proxy tokens <r0>..<r{self.num_proxy_tokens - 1}>)"
            )
        height, width = size
        for k, (x1, y1, x2, y2) in enumerate(b.tolist()):
            if not all(np.isfinite(v) for v in (x1, y1, x2, y2)):
                raise ValueError(f"refer box {k} of image {i} = {[x1, y1, x2, y2]} is not finite")
            if not (x1 < x2 and y1 < y2):
                raise ValueError(
                    f"refer box {k} of image {i} = {[x1, y1, x2, y2]} is degenerate: pixel xyxy needs x1 < x2 and y1 < y2"
                )
            if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                raise ValueError(
                    f"refer box {k} of image {i} = {[x1, y1, x2, y2]} lies outside the image (width {width}, height "
                    f"{height}); boxes are pixel xyxy on the original image, clip them to [0, w] x [0, h]"
                )
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        cxcywh = torch.stack(
            [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1
        )
        return (cxcywh / scale).float()

    def _expand_prompt(self, text: str, i: int, num_boxes: int) -> tuple[str, list[dict]]:
        """Expand `<refer>`, `<image>` and `<region>` into the static slot layout the model fills.

        Returns the expanded text and, per replaced placeholder, `{"span": (start, end)` in `text`,
        `"new_span": (start, end)` in the expanded text}` (transformers' `text_replacement_offsets` format).
        """
        expansion = {
            REFER_PLACEHOLDER: REFER_EXPANSION,
            "<image>": "<image>" * self.num_image_tokens,
            "<region>": "".join(f"<r{j}><region>" for j in range(self.num_proxy_tokens)),
        }
        check = text.replace(REFER_PLACEHOLDER, REFER_EXPANSION)
        for token in ("<image>", "<region>"):
            count = check.count(token)
            if count != 1:
                raise ValueError(
                    f"prompt {i} has {count} `{token}` placeholders, Groma needs exactly one (its fixed first turn "
                    f"'{FIRST_USER_TURN}'); build prompts with processor.apply_chat_template(...) or "
                    "build_groma_prompt(...)" + (" - the processor expands it itself" if count > 1 else "")
                )
        n_feat, n_box = check.count("<refer_feat>"), check.count("<refer_box>")
        if n_feat != num_boxes or n_box != num_boxes:
            raise ValueError(
                f"prompt {i} has {n_box} <refer_box> / {n_feat} <refer_feat> (referring placeholders `{REFER_PLACEHOLDER}` "
                f"= `{REFER_EXPANSION}`) but {num_boxes} refer_boxes were given for its image"
            )
        pieces, replacements, end = [], [], 0
        for match in re.finditer("|".join(re.escape(t) for t in expansion), text):
            pieces.append(text[end : match.start()])
            start = sum(len(p) for p in pieces)
            pieces.append(expansion[match.group()])
            replacements.append({"span": match.span(), "new_span": (start, start + len(pieces[-1]))})
            end = match.end()
        pieces.append(text[end:])
        return "".join(pieces), replacements

    def _check_slots(self, ids: list[int], i: int, num_boxes: int, expanded: str, text_kwargs: dict) -> None:
        """Verify the tokenized prompt holds every visual slot and referring token (truncation may cut them)."""
        ok = ids.count(self.image_token_id) == self.num_image_tokens
        region_pos = [p for p, t in enumerate(ids) if t == self.region_token_id]
        ok = ok and len(region_pos) == self.num_proxy_tokens
        ok = ok and all(p > 0 and ids[p - 1] == self.proxy_token_ids[j] for j, p in enumerate(region_pos))
        ok = ok and ids.count(self.refer_box_token_id) == num_boxes and ids.count(self.refer_feat_token_id) == num_boxes
        if ok:
            return
        if text_kwargs.get("truncation") not in (None, False, "do_not_truncate"):
            full = len(
                self.tokenizer(expanded, add_special_tokens=text_kwargs.get("add_special_tokens", True))["input_ids"]
            )
            raise ValueError(
                f"truncation to max_length={text_kwargs.get('max_length')} cut into prompt {i}'s Groma slots "
                f"({self.num_image_tokens} <image>, {self.num_proxy_tokens} <r_j><region> pairs, {num_boxes} referring "
                f"tokens); the expanded prompt has {full} tokens: raise max_length or disable truncation"
            )
        raise ValueError(
            f"prompt {i} did not tokenize into Groma's slot layout; the tokenizer must encode Groma's special tokens "
            "as single tokens (add_groma_tokens)"
        )

    @property
    def unused_input_names(self) -> list[str]:
        """Groma's LLM takes no `token_type_ids` (a tokenizer may list them)."""
        return ["token_type_ids"]

    @property
    def model_input_names(self) -> list[str]:
        """The tokenizer's input names then the image processor's (`pixel_values`, `image_sizes`), as transformers'
        processors; `refer_boxes` is returned only when boxes are given."""
        names = [*self.tokenizer.model_input_names, *self.image_processor.model_input_names]
        return [name for name in dict.fromkeys(names) if name not in self.unused_input_names]

    # ------------------------------------------------------------------------------------------------ outputs
    def post_process_grounding(self, generated, region_boxes, target_sizes, skip_prompt: bool = True) -> list[dict]:
        """Turn generated answers into clean text, (phrase, pixel boxes) pairs and free boxes, per image.

        Args:
            generated: token ids — `generate(...).sequences` (B, L) tensor, list of id lists — or decoded strings
                (special tokens kept). One sequence/str is accepted for a single image.
            region_boxes: per image, the model's region boxes, Tensor (N_i, 4) normalised xyxy in [0, 1];
                row j is the box of proxy token `<r_j>`.
            target_sizes: per image the ORIGINAL (height, width) (the processor's `image_sizes`), (B, 2).
            skip_prompt: the answer is what follows the last `ASSISTANT:` (so full `sequences`, prompt included,
                can be passed as they are; answers never contain it). The answer ends at the first `</s>`.

        Returns:
            one dict per image:
            - `text`: the answer without special tokens, `<rK>`, `<p>`/`</p>` tags; whitespace collapsed;
            - `phrases`: list of `(phrase, Tensor(k, 4))` for each `<p>phrase</p><roi>...</roi>` span, pixel xyxy on
              the original image (k may be 0 for a phrase without boxes);
            - `boxes`: Tensor(m, 4) pixel xyxy of the `<rK>` outside phrases (REC answers `<roi><r21></roi>`);
            - `parsed`: False when the markup is malformed (then `phrases` and `boxes` are empty);
            - `reason`: None, or why something was dropped or could not be parsed.
            Never raises on model output; a malformed call (mismatched batch sizes, wrong types) raises.
        """
        texts = self._decode_all(generated)
        batch = len(texts)
        if isinstance(region_boxes, torch.Tensor):
            region_boxes = [region_boxes] if region_boxes.ndim == 2 else list(region_boxes)
        if isinstance(target_sizes, (torch.Tensor, np.ndarray)):
            target_sizes = target_sizes.tolist()
        if batch == 1 and len(target_sizes) == 2 and all(isinstance(v, (int, float)) for v in target_sizes):
            target_sizes = [target_sizes]
        if len(region_boxes) != batch or len(target_sizes) != batch:
            raise ValueError(
                f"post_process_grounding got {batch} sequences, {len(region_boxes)} region_boxes and "
                f"{len(target_sizes)} target_sizes; they must match"
            )
        return [self._parse_answer(t, rb, hw, skip_prompt) for t, rb, hw in zip(texts, region_boxes, target_sizes)]

    def _decode_all(self, generated) -> list[str]:
        if isinstance(generated, str):
            return [generated]
        if isinstance(generated, (torch.Tensor, np.ndarray)):
            rows = [generated.tolist()] if generated.ndim == 1 else generated.tolist()
        elif isinstance(generated, (list, tuple)) and generated and all(isinstance(g, str) for g in generated):
            return list(generated)
        elif isinstance(generated, (list, tuple)) and generated and all(isinstance(g, int) for g in generated):
            rows = [list(generated)]
        elif isinstance(generated, (list, tuple)) and generated:
            rows = [g.tolist() if isinstance(g, (torch.Tensor, np.ndarray)) else list(g) for g in generated]
        else:
            raise TypeError(f"post_process_grounding needs token ids or strings, got {type(generated).__name__}")
        return self.tokenizer.batch_decode(rows, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _parse_answer(self, text: str, region_boxes, size, skip_prompt: bool) -> dict:
        if skip_prompt and GENERATION_PROMPT in text:
            text = text.rsplit(GENERATION_PROMPT, 1)[1]
        eos = getattr(self.tokenizer, "eos_token", None) or "</s>"
        text = text.split(eos, 1)[0]

        height, width = (float(v) for v in size)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        pixel = (
            torch.zeros(0, 4)
            if region_boxes is None
            else torch.as_tensor(region_boxes).detach().to("cpu", torch.float32).reshape(-1, 4) * scale
        )

        notes: list[str] = []
        clean: list[str] = []
        phrases: list[list] = []  # [phrase, [indices]]
        free: list[int] = []
        state, phrase_parts, target = "text", [], None
        malformed = None
        for piece in self._tag_pattern.split(text):
            if not piece:
                continue
            proxy = re.fullmatch(r"<r([0-9]+)>", piece)
            if proxy is None and not self._tag_pattern.fullmatch(piece):  # plain text
                if state == "roi":
                    if piece.strip():
                        malformed = "text inside <roi>...</roi>"
                        break
                    continue
                if state == "phrase":
                    phrase_parts.append(piece)
                elif state == "after_phrase" and piece.strip():
                    state = "text"
                clean.append(piece)
            elif piece == "<p>":
                if state in ("phrase", "roi"):
                    malformed = f"<p> inside {'<p>' if state == 'phrase' else '<roi>'}"
                    break
                state, phrase_parts = "phrase", []
            elif piece == "</p>":
                if state != "phrase":
                    malformed = "</p> without a matching <p>"
                    break
                phrases.append([" ".join("".join(phrase_parts).split()), []])
                state = "after_phrase"
            elif piece == "<roi>":
                if state in ("phrase", "roi"):
                    malformed = f"<roi> inside {'<p>' if state == 'phrase' else '<roi>'}"
                    break
                target = phrases[-1][1] if state == "after_phrase" else free
                state = "roi"
            elif piece == "</roi>":
                if state != "roi":
                    malformed = "</roi> without a matching <roi>"
                    break
                state = "text"
            elif proxy is not None:
                if state == "phrase":
                    malformed = "<rK> inside <p>...</p>"
                    break
                (target if state == "roi" else free).append(int(proxy.group(1)))
                if state == "after_phrase":
                    state = "text"
            # any other special token ([PAD], <s>, <sep>, ...) is dropped from the text
        if malformed is None and state == "phrase":
            notes.append("output ended inside <p> (generation cut off?); that phrase is dropped")
        if malformed is None and state == "roi":
            notes.append("output ended inside <roi> (generation cut off?); its boxes are kept")

        result_text = " ".join("".join(clean).split())
        if malformed is not None:
            return {
                "text": result_text,
                "phrases": [],
                "boxes": torch.zeros(0, 4),
                "parsed": False,
                "reason": f"malformed grounding markup: {malformed}",
            }

        n = pixel.shape[0]
        dropped = sorted({k for _, idx in phrases for k in idx if k >= n} | {k for k in free if k >= n})
        if dropped:
            notes.append(f"dropped {' '.join(f'<r{k}>' for k in dropped)}: only {n} regions were proposed")

        def boxes_of(indices):
            keep = [k for k in indices if k < n]
            return pixel[keep] if keep else torch.zeros(0, 4)

        return {
            "text": result_text,
            "phrases": [(phrase, boxes_of(idx)) for phrase, idx in phrases],
            "boxes": boxes_of(free),
            "parsed": True,
            "reason": "; ".join(notes) or None,
        }


__all__ = [
    "GromaProcessor",
    "add_groma_tokens",
    "build_groma_prompt",
    "GROMA_ADDED_TOKENS",
    "GROMA_CHAT_TEMPLATE",
]
