"""groundvlm model classes (these files also ship to the Hub as remote code).

Importing this package registers every config/model with the transformers Auto classes, so
`AutoConfig` / `AutoModel` resolve our `model_type`s natively, without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel

__all__: list[str] = []


def _register(config_cls, *model_registrations):
    """Register `config_cls` with AutoConfig and each `(auto_class, model_cls)` pair, idempotently."""
    try:
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    except TypeError:  # older signatures without exist_ok
        AutoConfig.register(config_cls.model_type, config_cls)
    for auto_cls, model_cls in model_registrations:
        try:
            auto_cls.register(config_cls, model_cls, exist_ok=True)
        except TypeError:
            auto_cls.register(config_cls, model_cls)


# [vpgtrans]
from transformers import AutoModelForImageTextToText  # noqa: E402

from .configuration_vpgtrans import VPGTransConfig  # noqa: E402
from .modeling_vpgtrans import VPGTransModel  # noqa: E402

_register(VPGTransConfig, (AutoModel, VPGTransModel), (AutoModelForImageTextToText, VPGTransModel))
__all__ += ["VPGTransConfig", "VPGTransModel"]
# [pin]
from transformers import AutoModelForImageTextToText  # noqa: E402

from .configuration_pin import PinConfig  # noqa: E402
from .modeling_pin import PinForLocalization  # noqa: E402

_register(PinConfig, (AutoModel, PinForLocalization), (AutoModelForImageTextToText, PinForLocalization))
__all__ += ["PinConfig", "PinForLocalization"]
# [groma]
from transformers import AutoModelForImageTextToText  # noqa: E402

from .configuration_groma import GromaConfig  # noqa: E402
from .modeling_groma import GromaForConditionalGeneration  # noqa: E402

_register(
    GromaConfig,
    (AutoModel, GromaForConditionalGeneration),
    (AutoModelForImageTextToText, GromaForConditionalGeneration),
)
__all__ += ["GromaConfig", "GromaForConditionalGeneration"]
