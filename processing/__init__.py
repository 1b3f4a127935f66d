"""groundvlm processors and image processors (these files also ship to the Hub as remote code).

Importing this package registers every processor with `AutoProcessor` / `AutoImageProcessor`.
"""

__all__: list[str] = []

# [vpgtrans]
from transformers import AutoProcessor  # noqa: E402

from groundvlm.modeling.configuration_vpgtrans import VPGTransConfig as _VPGTransConfig  # noqa: E402

from .processing_vpgtrans import VPGTransProcessor  # noqa: E402

# AutoProcessor's registry is keyed by config class; this package-level import is registration only and is
# never shipped (processing_vpgtrans.py itself imports nothing from modeling/).
try:
    AutoProcessor.register(_VPGTransConfig, VPGTransProcessor, exist_ok=True)
except TypeError:  # older signatures without exist_ok
    AutoProcessor.register(_VPGTransConfig, VPGTransProcessor)
__all__ += ["VPGTransProcessor"]
# [pin]
from groundvlm.modeling.configuration_pin import PinConfig as _PinConfig  # noqa: E402

from .pin_grid_codec import PinGridCodec  # noqa: E402
from .processing_pin import PinProcessor  # noqa: E402

try:  # native lookup (registry keyed by config class; registration only, never shipped)
    AutoProcessor.register(_PinConfig, PinProcessor, exist_ok=True)
except TypeError:  # older signatures without exist_ok
    AutoProcessor.register(_PinConfig, PinProcessor)
__all__ += ["PinGridCodec", "PinProcessor"]
# [groma]
from transformers import AutoImageProcessor, AutoProcessor  # noqa: E402

from groundvlm.modeling.configuration_groma import GromaConfig as _GromaConfig  # noqa: E402

from .image_processing_groma import GromaImageProcessor  # noqa: E402
from .processing_groma import GromaProcessor, add_groma_tokens, build_groma_prompt  # noqa: E402

# Native lookup (registry keyed by config class; registration only, never shipped) and `auto_map` on save, so a
# saved processor folder loads with `trust_remote_code=True` where groundvlm is not installed.
try:
    AutoProcessor.register(_GromaConfig, GromaProcessor, exist_ok=True)
    AutoImageProcessor.register(_GromaConfig, image_processor_classes={"pil": GromaImageProcessor}, exist_ok=True)
except TypeError:  # older signatures without exist_ok
    AutoProcessor.register(_GromaConfig, GromaProcessor)
    AutoImageProcessor.register(_GromaConfig, image_processor_classes={"pil": GromaImageProcessor})
GromaImageProcessor.register_for_auto_class("AutoImageProcessor")
GromaProcessor.register_for_auto_class("AutoProcessor")
__all__ += ["GromaImageProcessor", "GromaProcessor", "add_groma_tokens", "build_groma_prompt"]
