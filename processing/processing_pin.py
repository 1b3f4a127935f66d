"""Processor for PIN: prompts "In the image is a(n) {obj} located at", box targets, and box parsing.

Wraps the base VLM's image processor and tokenizer. Text follows the reference's `TextConstructor`
(QUVA-Lab/PIN `utils/text_constructor.py`); boxes follow its `GridCodec` (see `pin_grid_codec.py`).
"""

import json

import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.processing_utils import ProcessingKwargs, Unpack
from transformers.utils import cached_file

from .pin_grid_codec import GRID_SIZE, PinGridCodec

_VOWELS = "aeiou"

# The reference's prompt, "In the image is a(n) {name} located at" (QUVA-Lab/PIN `utils/text_constructor.py`).
START_PROMPT = "In the image is"
MIDDLE_PROMPT = "located at"


def article(name: str) -> str:
    """ "an" when the name starts with a vowel letter, else "a" (the reference's rule)."""
    return "an" if name[0].lower() in _VOWELS else "a"


def pin_prompt(name: str, start_prompt: str = START_PROMPT, middle_prompt: str = MIDDLE_PROMPT) -> str:
    """PIN's prompt for one object name, without image tokens: `"In the image is a(n) {name} located at"`."""
    return f"{start_prompt} {article(name)} {name} {middle_prompt}"


def _image_size_hw(image) -> tuple[int, int]:
    """(height, width) of a PIL image, or of an (H, W, 3) / (3, H, W) array or tensor; rejects non-RGB and empty
    input."""
    mode = getattr(image, "mode", None)
    if isinstance(mode, str):  # PIL (a torch tensor's `mode` is a method)
        if mode != "RGB":
            raise ValueError(f"PIN expects RGB images, got a PIL image in mode {mode!r}: call image.convert('RGB')")
        height, width = image.height, image.width
    else:
        shape = tuple(getattr(image, "shape", ()))
        if len(shape) == 3 and shape[-1] == 3:
            height, width = shape[0], shape[1]
        elif len(shape) == 3 and shape[0] == 3:
            height, width = shape[1], shape[2]
        else:
            raise ValueError(
                f"PIN expects RGB images (PIL mode 'RGB', or arrays / tensors of shape (H, W, 3) or (3, H, W)), got "
                f"{type(image).__name__} with shape {shape}"
            )
    if height < 1 or width < 1:
        raise ValueError(f"PIN got an empty image ({width}x{height} pixels); every image needs at least one pixel")
    return int(height), int(width)


class PinProcessorKwargs(ProcessingKwargs, total=False):
    # Lowest priority: the tokenizer's init kwargs, then call kwargs, override it. `padding_side` follows the task
    # (set in `__call__`).
    _defaults = {"text_kwargs": {"padding": "longest"}}


class PinProcessor(ProcessorMixin):
    """Builds PIN inputs and targets for a base VLM, and turns generated text back into pixel boxes.

    Args:
        image_processor: the base's image processor. It must squash images to `image_size`×`image_size`
            (`size={"height": S, "width": S}`, no center crop), because box coordinates refer to that squashed
            image; `from_base_processor` configures a LLaVA/CLIP processor that way.
        tokenizer: the base's tokenizer; it must know `image_token`.
        num_image_tokens: image placeholders per image (BLIP-2/VPGTrans: the Q-Former queries; LLaVA: the
            projected patch tokens).
        image_token: the placeholder token.
        image_tokens_before_text: True (BLIP-2/VPGTrans layout, as `Blip2Processor`): the placeholders are put in
            front of the tokenized text, before its BOS. False (LLaVA layout): `text_prefix` holds `image_token`
            once and it is expanded in place, as `LlavaProcessor` does.
        text_prefix: text before the PIN prompt ("" for BLIP-2, "<image>" for LLaVA, like the reference's
            OpenFlamingo prompt "<image>In the image is ...").
        start_prompt / middle_prompt: "In the image is" / "located at" (the reference's defaults).
        end_text: appended to training targets (default: the tokenizer's EOS, "</s>" as in the reference).
        grid_size / image_size / range_max_value: the box grid (see `PinGridCodec`); use the model config's
            `grid_size` and `image_size`.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens: int = 32,
        image_token: str = "<image>",
        image_tokens_before_text: bool = True,
        text_prefix: str = "",
        start_prompt: str = START_PROMPT,
        middle_prompt: str = MIDDLE_PROMPT,
        end_text: str | None = None,
        grid_size: int = GRID_SIZE,
        image_size: int = 224,
        range_max_value: float | None = None,
        chat_template=None,
        **kwargs,
    ):
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        if not image_tokens_before_text and text_prefix.count(image_token) != 1:
            raise ValueError(
                f"with image_tokens_before_text=False, text_prefix must contain {image_token!r} exactly once, "
                f"got {text_prefix!r}"
            )
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.image_tokens_before_text = image_tokens_before_text
        self.text_prefix = text_prefix
        self.start_prompt = start_prompt
        self.middle_prompt = middle_prompt
        self.end_text = end_text
        self.grid_size = grid_size
        self.image_size = image_size
        self.range_max_value = range_max_value
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self._check_squash(image_processor, image_size)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {image_token!r} token: add it as a special token first")
        self.codec = PinGridCodec(grid_size=grid_size, image_size=image_size, range_max_value=range_max_value)

    def check_model_config(self, config) -> None:
        """Raise when a PIN model's config (a `PinConfig` or its dict) writes boxes on another grid than this
        processor: the model was trained on `config.grid_size`² cells over `config.image_size` px, and the processor
        must encode and decode boxes on the same grid."""
        get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
        for key in ("grid_size", "image_size"):
            mine, theirs = getattr(self, key), get(key)
            if theirs is not None and int(theirs) != int(mine):
                raise ValueError(
                    f"grid mismatch: the PinProcessor has {key}={mine} but the model's PinConfig has "
                    f"{key}={theirs}; build the processor with {key}={theirs} (PinProcessor.from_base_processor("
                    f"..., {key}={theirs})) or load a PIN trained with {key}={mine}"
                )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`ProcessorMixin.from_pretrained`, then, when the folder also holds a PIN's `config.json`, a check that
        both use one box grid (`check_model_config`)."""
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        hub = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
        config_file = cached_file(
            pretrained_model_name_or_path,
            "config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **{k: kwargs[k] for k in hub if k in kwargs},
        )
        if config_file is not None and isinstance(processor, PinProcessor):
            with open(config_file, encoding="utf-8") as f:
                config = json.load(f)
            if config.get("model_type") == "pin":
                processor.check_model_config(config)
        return processor

    @staticmethod
    def _check_squash(image_processor, image_size: int) -> None:
        size = getattr(image_processor, "size", None) or {}
        size = dict(size) if not isinstance(size, dict) else size
        if (
            size.get("height") != image_size
            or size.get("width") != image_size
            or getattr(image_processor, "do_center_crop", False)
        ):
            raise ValueError(
                f"the image processor must squash images to {image_size}x{image_size} (size={{'height': {image_size}, "
                f"'width': {image_size}}}, do_center_crop=False) so that boxes map back to the original image; got "
                f"size={size}, do_center_crop={getattr(image_processor, 'do_center_crop', None)}"
            )

    @classmethod
    def from_base_processor(cls, base_processor, grid_size: int = GRID_SIZE, image_size: int | None = None, **kwargs):
        """Build a PinProcessor from a `Blip2Processor`, a VPGTrans processor or a `LlavaProcessor`.

        A LLaVA image processor that resizes the shortest edge and center-crops is copied and set to squash to its
        crop size instead (PIN's boxes refer to the whole, squashed image).
        """
        image_processor = base_processor.image_processor
        tokenizer = base_processor.tokenizer
        image_token = str(getattr(base_processor, "image_token", "<image>"))
        if getattr(base_processor, "num_query_tokens", None) is not None:  # BLIP-2 family
            size = image_size or image_processor.size["height"]
            return cls(
                image_processor,
                tokenizer,
                num_image_tokens=base_processor.num_query_tokens,
                image_token=image_token,
                image_tokens_before_text=True,
                grid_size=grid_size,
                image_size=size,
                **kwargs,
            )
        if getattr(base_processor, "patch_size", None) is not None:  # LLaVA family
            crop = getattr(image_processor, "crop_size", None) or image_processor.size
            size = image_size or crop["height"]
            squash = type(image_processor).from_dict(
                {**image_processor.to_dict(), "size": {"height": size, "width": size}, "do_center_crop": False}
            )
            num = (size // base_processor.patch_size) ** 2 + base_processor.num_additional_image_tokens
            if base_processor.vision_feature_select_strategy == "default":
                num -= 1
            return cls(
                squash,
                tokenizer,
                num_image_tokens=num,
                image_token=image_token,
                image_tokens_before_text=False,
                text_prefix=image_token,
                grid_size=grid_size,
                image_size=size,
                **kwargs,
            )
        raise ValueError(
            f"from_base_processor supports BLIP-2/VPGTrans processors (num_query_tokens) and LLaVA processors "
            f"(patch_size), got {type(base_processor).__name__}"
        )

    # ------------------------------------------------------------------ text

    article = staticmethod(article)

    max_name_tokens = 64
    """The longest object name (in tokens) a prompt takes; a longer one is an error rather than a prompt that
    overruns the base LLM's positions (category names and referring expressions are far shorter)."""

    def _check_name(self, name) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"object names must be non-empty strings, got {name!r}")
        n_tokens = len(self.tokenizer(name, add_special_tokens=False)["input_ids"])
        if n_tokens > self.max_name_tokens:
            raise ValueError(
                f"object name {name[:40]!r}... is {n_tokens} tokens long; PIN prompts take names of at most "
                f"{self.max_name_tokens} tokens (processor.max_name_tokens): shorten the name"
            )
        return name

    def build_prompt(self, name: str) -> str:
        """`"{text_prefix}In the image is a(n) {name} located at"`."""
        name = self._check_name(name)
        return f"{self.text_prefix}{pin_prompt(name, self.start_prompt, self.middle_prompt)}"

    def build_target(self, name: str, box_text: str, reconstruct_name: bool = False) -> tuple[str, str]:
        """`(full_text, unsupervised_prefix)` of one training sample, as the reference's `construct_prompt_train`.

        Normal: `"{prompt} [x1,y1,x2,y2]{end}"`, loss on " [x1,y1,x2,y2]{end}".
        `reconstruct_name`: `"{prefix}In the image is a(n) {name} located at [..] {end}"` (note the reference's
        space before end), loss from the name on.
        """
        name = self._check_name(name)
        end = self.tokenizer.eos_token if self.end_text is None else self.end_text
        if reconstruct_name:
            prefix = f"{self.text_prefix}{self.start_prompt} {self.article(name)}"
            return f"{prefix} {name} {self.middle_prompt} {box_text} {end}", prefix
        prefix = self.build_prompt(name)
        return f"{prefix} {box_text}{end}", prefix

    def _ids(self, text: str) -> list[int]:
        """Token ids of one text, image placeholders included, laid out as the base's own processor does."""
        if self.image_tokens_before_text:
            return self.tokenizer(text, add_special_tokens=True)["input_ids"]
        expanded = text.replace(self.image_token, self.image_token * self.num_image_tokens)
        return self.tokenizer(expanded, add_special_tokens=True)["input_ids"]

    # ------------------------------------------------------------------ __call__

    def __call__(
        self,
        images=None,
        objects: list[str] | str | None = None,
        boxes: list | None = None,
        reconstruct_name: bool = False,
        **kwargs: Unpack[PinProcessorKwargs],
    ) -> BatchFeature:
        """Inputs for `PinForLocalization` (and, with `boxes`, training labels).

        Args:
            images: one RGB image or a list (PIL, or `(H, W, 3)` / `(3, H, W)` arrays), one per object.
            objects: the object name to localise in each image.
            boxes: optional `[x1, y1, x2, y2]` pixel boxes on each ORIGINAL image; turns on training mode: the text
                gets the box target and `labels` are returned (-100 everywhere but the target span).
            reconstruct_name: the reference's first-curriculum-stage variant (the loss also covers the name).
            kwargs: as for transformers' processors, flat or grouped in `text_kwargs` / `images_kwargs` /
                `common_kwargs`; the tokenizer's init kwargs are the defaults. Text: `padding_side` ("left" for
                generation, the default without boxes; "right" for training, the default with boxes), `padding`
                ("longest" (default) or "max_length" with `max_length`, the whole row's length, placeholders
                included), `pad_to_multiple_of`, `return_tensors` (default "pt"). PIN's prompts are never truncated:
                `truncation` with a row longer than `max_length` raises. Images: the image processor's options.

        Returns:
            `BatchFeature` with `pixel_values` `(B, 3, S, S)`, `input_ids` and `attention_mask` `(B, L)`, and
            `labels` `(B, L)` when boxes are given.
        """
        if images is None or objects is None:
            raise ValueError("PinProcessor needs images and objects (one object name per image)")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        objects = [objects] if isinstance(objects, str) else list(objects)
        if len(images) != len(objects):
            raise ValueError(f"got {len(images)} images but {len(objects)} object names; give one name per image")
        sizes = [_image_size_hw(image) for image in images]
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"got {len(boxes)} boxes for {len(images)} images; give one box per image")
        # A padding_side stored in the tokenizer's config is no default here: the side follows the task.
        tokenizer_init_kwargs = {k: v for k, v in self.tokenizer.init_kwargs.items() if k != "padding_side"}
        merged = self._merge_kwargs(PinProcessorKwargs, tokenizer_init_kwargs=tokenizer_init_kwargs, **kwargs)
        text_kwargs, images_kwargs = merged["text_kwargs"], dict(merged["images_kwargs"])
        images_kwargs.pop("return_tensors", None)
        return_tensors = text_kwargs["return_tensors"] if "return_tensors" in text_kwargs else "pt"
        padding_side = text_kwargs.get("padding_side") or ("right" if boxes is not None else "left")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")

        rows, label_rows = [], []
        for i, name in enumerate(objects):
            if boxes is None:
                ids = self._ids(self.build_prompt(name))
                rows.append(ids)
                continue
            height, width = sizes[i]
            box = [float(v) for v in boxes[i]]
            if len(box) != 4:
                raise ValueError(f"box {i} must be [x1, y1, x2, y2], got {boxes[i]!r}")
            scaled = [
                box[0] * self.image_size / width, box[1] * self.image_size / height,
                box[2] * self.image_size / width, box[3] * self.image_size / height,
            ]  # fmt: skip
            try:
                box_text = self.codec.encode(scaled)
            except ValueError as err:
                raise ValueError(f"box {i} {box} on a {width}x{height} image: {err}") from None
            text, prefix = self.build_target(name, box_text, reconstruct_name=reconstruct_name)
            ids = self._ids(text)
            # As the reference: the first len(tokenize(prefix)) tokens are not supervised.
            n_prefix = len(self._ids(prefix))
            rows.append(ids)
            label_rows.append([-100] * n_prefix + ids[n_prefix:])

        length = self._padded_length(rows, text_kwargs)
        input_ids, attention_mask, labels = self._pad(rows, label_rows or None, padding_side, length)
        pixel_values = self.image_processor(images, return_tensors="pt", **images_kwargs)["pixel_values"]
        if return_tensors != "pt":
            pixel_values = pixel_values.tolist()
        data = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
        if labels is not None:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _padded_length(self, rows, text_kwargs) -> int:
        """The common row length (placeholders included) the text kwargs ask for; rows are never truncated."""
        lead = self.num_image_tokens if self.image_tokens_before_text else 0
        longest = max(len(r) for r in rows) + lead
        padding, max_length = text_kwargs.get("padding", "longest"), text_kwargs.get("max_length")
        truncation = text_kwargs.get("truncation")
        if max_length is not None and longest > max_length and truncation not in (None, False, "do_not_truncate"):
            raise ValueError(
                f"a PIN row has {longest} tokens, more than max_length={max_length}; PIN's prompts and box targets "
                "are never truncated: raise max_length or drop truncation"
            )
        if padding in (False, "do_not_pad") and len({len(r) for r in rows}) > 1:
            raise ValueError("rows of different lengths need padding (padding='longest' or 'max_length')")
        length = max(longest, max_length) if padding == "max_length" and max_length is not None else longest
        multiple = text_kwargs.get("pad_to_multiple_of")
        return -(-length // multiple) * multiple if multiple else length

    def _pad(self, rows, label_rows, padding_side, length):
        """Pad to `length` (placeholders included). In the BLIP-2 layout the padding goes between the image
        placeholders and the text (as `Blip2Processor` pads the text before prepending the placeholders).
        Returns lists (ids, mask, labels or None)."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token")
        lead = self.num_image_tokens if self.image_tokens_before_text else 0
        ids_out, mask_out, labels_out = [], [], []
        for i, row in enumerate(rows):
            n_pad = length - lead - len(row)
            text_ids, text_mask = row, [1] * len(row)
            text_labels = label_rows[i] if label_rows is not None else None
            if padding_side == "left":
                text_ids, text_mask = [pad_id] * n_pad + text_ids, [0] * n_pad + text_mask
                text_labels = [-100] * n_pad + text_labels if text_labels is not None else None
            else:
                text_ids, text_mask = text_ids + [pad_id] * n_pad, text_mask + [0] * n_pad
                text_labels = text_labels + [-100] * n_pad if text_labels is not None else None
            ids_out.append([self.image_token_id] * lead + text_ids)
            mask_out.append([1] * lead + text_mask)
            if text_labels is not None:
                labels_out.append([-100] * lead + text_labels)
        return ids_out, mask_out, (labels_out if label_rows is not None else None)

    @property
    def unused_input_names(self) -> list[str]:
        """The processor builds `input_ids` and `attention_mask` itself; the bases take no `token_type_ids`."""
        return ["token_type_ids"]

    @property
    def model_input_names(self) -> list[str]:
        """The tokenizer's input names then the image processor's, as transformers' processors."""
        names = [*self.tokenizer.model_input_names, *self.image_processor.model_input_names]
        return [name for name in dict.fromkeys(names) if name not in self.unused_input_names]

    # ------------------------------------------------------------------ decoding

    def max_box_tokens(self) -> int:
        """Tokens this tokenizer spends on the longest box answer of the grid (`PinGridCodec.max_tokens`)."""
        return self.codec.max_tokens(self.tokenizer)

    def post_process_localization(self, generated, target_sizes, labels: list[str] | None = None) -> list[dict]:
        """Boxes from generated text, in pixels of each caller's ORIGINAL image.

        Args:
            generated: `(B, L)` generated ids (a tensor or lists; special tokens are skipped) or a list of B strings.
                The prompt may be included: the first `' [x1,y1,x2,y2]'` is parsed.
            target_sizes: B `(height, width)` of the original images.
            labels: the B object names asked for (default: the name read back from "is a(n) {name} located at").

        Returns:
            One dict per image: `boxes` float tensor `(1, 4)` `[x1, y1, x2, y2]` on the original image, `labels`
            `[name]`, `text` (the decoded text), `parsed` (False: the reference's fallback box, cell [0,0,0,0], was
            used) and `reason` (why parsing failed; "" when parsed).
        """
        if isinstance(generated, str):
            raise TypeError("generated must be a list of strings or a batch of token ids, not a single string")
        if isinstance(generated, torch.Tensor):
            if generated.dim() != 2:
                raise ValueError(f"generated ids must be (batch, seq_len), got shape {tuple(generated.shape)}")
            texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        else:
            generated = list(generated)
            if all(isinstance(g, str) for g in generated):
                texts = generated
            else:
                texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        target_sizes = [tuple(s) for s in (target_sizes.tolist() if hasattr(target_sizes, "tolist") else target_sizes)]
        if len(target_sizes) != len(texts):
            raise ValueError(f"got {len(target_sizes)} target_sizes for {len(texts)} generated texts")
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"got {len(labels)} labels for {len(texts)} generated texts")
        results = []
        for i, text in enumerate(texts):
            if len(target_sizes[i]) != 2 or min(target_sizes[i]) <= 0:
                raise ValueError(f"target_sizes[{i}] must be a positive (height, width), got {target_sizes[i]}")
            height, width = (float(v) for v in target_sizes[i])
            box, parsed, reason = self.codec.decode(text)
            sx, sy = width / self.image_size, height / self.image_size
            pixel_box = torch.tensor([[box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]], dtype=torch.float32)
            name = labels[i] if labels is not None else self._read_name(text)
            results.append({"boxes": pixel_box, "labels": [name], "text": text, "parsed": parsed, "reason": reason})
        return results

    def _read_name(self, text: str) -> str:
        """The object name in "... {start_prompt} a(n) {name} {middle_prompt}", or "" when absent."""
        head = f"{self.start_prompt} "
        start = text.find(head)
        end = text.find(f" {self.middle_prompt}", start + len(head)) if start >= 0 else -1
        if start < 0 or end < 0:
            return ""
        words = text[start + len(head) : end].split(" ", 1)
        return words[1] if len(words) == 2 and words[0] in ("a", "an") else ""


PinProcessor.register_for_auto_class()
