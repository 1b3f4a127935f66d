"""Image processor for Groma: a plain 448x448 resize (no crop, no aspect preservation) + ImageNet normalisation.

The reference inference script (`groma/eval/run_groma.py`) opens the image with `.convert("RGB")`, resizes it
with PIL's `Image.resize((448, 448))` (bicubic, PIL's default filter) and then runs a `BitImageProcessor` whose
resize and crop are disabled, i.e. rescale by 1/255 and normalise with ImageNet mean/std. This processor does
exactly that on the PIL backend (`PilBackend`, present and unchanged in transformers 5.17 .. 5.23), so pixel
values match the released model's preprocessing. (The mmdet training loaders resized with cv2 bilinear; the
difference is a slight interpolation change, the released inference path is the one reproduced here.)

Because the resize squashes the image, normalised box coordinates are the same on the original image and on
the 448x448 input; the processor therefore also returns each image's original `(height, width)` as
`image_sizes`, which `GromaProcessor` uses to normalise user boxes and to scale predicted boxes back to pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

try:  # PIL ships with transformers' vision extra; keep the import guarded for the remote-code import check
    from PIL import Image
except ImportError:  # pragma: no cover - PilBackend itself requires PIL
    Image = None


class GromaImageProcessor(PilBackend):
    r"""
    Groma image processor: resize to 448x448 (bicubic, no crop), rescale by 1/255, normalise with ImageNet
    mean/std.

    Accepted images: PIL images of any mode (converted with `Image.convert("RGB")`, as the reference does — an
    alpha channel is dropped, a palette expanded, grayscale replicated), or uint8 arrays/tensors with 3 channels
    in HWC or CHW layout. Arrays/tensors with another channel count raise a `ValueError` (their colour meaning is
    ambiguous: convert them to RGB first); float arrays are accepted only with `do_rescale=False` (values in
    [0, 1]), since rescaling already-rescaled values would silently give a black image.

    Returns a `BatchFeature` with
        - `pixel_values`: (B, 3, 448, 448) float32,
        - `image_sizes`: (B, 2) int64, the original `(height, width)` of every image.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 448, "width": 448}
    do_resize = True
    do_center_crop = False
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    model_input_names = ["pixel_values", "image_sizes"]

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs) -> np.ndarray:
        """Turn one input image into a channels-first RGB array (3, H, W), validating its mode and dtype."""
        do_rescale = kwargs.get("do_rescale", self.do_rescale)
        if Image is not None and isinstance(image, Image.Image):
            if image.mode != "RGB":
                if not (do_convert_rgb if do_convert_rgb is not None else self.do_convert_rgb):
                    raise ValueError(
                        f"Groma expects RGB images, got a PIL image of mode {image.mode!r} with do_convert_rgb=False"
                    )
                image = image.convert("RGB")
            return np.moveaxis(np.asarray(image), -1, 0)

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if not isinstance(image, np.ndarray):
            raise TypeError(
                f"Groma images must be PIL images, numpy arrays or torch tensors, got {type(image).__name__}"
            )
        if image.ndim != 3:
            raise ValueError(
                f"Groma expects one RGB image per entry (H, W, 3) or (3, H, W); got an array of shape {image.shape}. "
                "Convert grayscale/alpha images to RGB first, e.g. PIL.Image.fromarray(a).convert('RGB')."
            )
        layout = str(getattr(input_data_format, "value", input_data_format)) if input_data_format else None
        if layout == "channels_first" or (layout is None and image.shape[0] == 3 and image.shape[-1] != 3):
            chw = image
        elif layout == "channels_last" or (layout is None and image.shape[-1] == 3):
            chw = np.moveaxis(image, -1, 0)
        else:
            raise ValueError(
                f"Groma expects RGB images with 3 channels; got an array of shape {image.shape}. "
                "Convert it to RGB first, e.g. PIL.Image.fromarray(a).convert('RGB')."
            )
        if chw.shape[0] != 3:
            raise ValueError(f"Groma expects 3 channels, got an array of shape {image.shape} ({layout})")
        if do_rescale and chw.dtype != np.uint8:
            raise ValueError(
                f"Groma images given as arrays/tensors must be uint8 (0..255) when do_rescale=True, got {chw.dtype}; "
                "pass uint8 data, or floats in [0, 1] with do_rescale=False."
            )
        return np.ascontiguousarray(chw)

    def _preprocess(self, images: list[np.ndarray], **kwargs) -> BatchFeature:
        """Run the resize/rescale/normalise pipeline and record every image's original (height, width)."""
        image_sizes = [tuple(int(s) for s in image.shape[-2:]) for image in images]
        for height, width in image_sizes:
            if height < 1 or width < 1:
                raise ValueError(f"Groma got an empty image of size (h={height}, w={width})")
        return_tensors = kwargs.get("return_tensors")
        out = super()._preprocess(images, **kwargs)
        return BatchFeature(
            data={"pixel_values": out["pixel_values"], "image_sizes": image_sizes}, tensor_type=return_tensors
        )


__all__ = ["GromaImageProcessor"]
