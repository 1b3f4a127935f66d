"""Configuration of PIN, the Positional Insert for frozen vision-language models."""

from transformers import PretrainedConfig


class PinConfig(PretrainedConfig):
    """Configuration of [`PinForLocalization`]: which frozen base VLM, and the shape of the insert π = ψ(S).

    Args:
        base_model_name_or_path (`str`, *optional*):
            Where `from_pretrained` loads the frozen base VLM from (a Hub id or a local path).
        base_architecture (`str`, *optional*):
            Class name of the base: `"Blip2ForConditionalGeneration"`, `"VPGTransModel"` or
            `"LlavaForConditionalGeneration"`.
        base_model_type (`str`, *optional*):
            The base config's `model_type` (checked when the base is loaded).
        base_subfolder (`str`, *optional*):
            Set when the base was saved inside the PIN folder (`save_pretrained(..., include_base=True)`); the base
            is then loaded from this subfolder instead of `base_model_name_or_path`.
        num_positions (`int`, defaults to 257):
            N, the number of vision tokens π is added to (257 for BLIP-2's EVA ViT-g incl. CLS, 256 for CLIP-L/14
            patches at 224 px).
        vision_hidden_size (`int`, defaults to 1408):
            D, the channel width of those vision tokens.
        sinusoid_dim (`int`, defaults to 64): width of the fixed sinusoid table S.
        hidden_dims (`list[int]`, defaults to `[512, 768]`): hidden widths of ψ.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of ψ's LayerNorms (PyTorch's default, as the reference).
        grid_size (`int`, defaults to 16): cells per side of the box grid the model writes boxes on.
        image_size (`int`, defaults to 224): side of the (squashed) image the box coordinates refer to.
    """

    model_type = "pin"

    def __init__(
        self,
        base_model_name_or_path: str | None = None,
        base_architecture: str | None = None,
        base_model_type: str | None = None,
        base_subfolder: str | None = None,
        num_positions: int = 257,
        vision_hidden_size: int = 1408,
        sinusoid_dim: int = 64,
        hidden_dims: list[int] | tuple[int, ...] = (512, 768),
        layer_norm_eps: float = 1e-5,
        grid_size: int = 16,
        image_size: int = 224,
        **kwargs,
    ):
        if num_positions < 1 or vision_hidden_size < 1 or sinusoid_dim < 1:
            raise ValueError(
                f"PinConfig needs positive num_positions, vision_hidden_size and sinusoid_dim, got "
                f"{num_positions}, {vision_hidden_size}, {sinusoid_dim}"
            )
        if grid_size < 1 or image_size < 1:
            raise ValueError(f"PinConfig needs positive grid_size and image_size, got {grid_size}, {image_size}")
        self.base_model_name_or_path = base_model_name_or_path
        self.base_architecture = base_architecture
        self.base_model_type = base_model_type
        self.base_subfolder = base_subfolder
        self.num_positions = num_positions
        self.vision_hidden_size = vision_hidden_size
        self.sinusoid_dim = sinusoid_dim
        self.hidden_dims = list(hidden_dims)
        self.layer_norm_eps = layer_norm_eps
        self.grid_size = grid_size
        self.image_size = image_size
        super().__init__(**kwargs)
