"""Configuration of Groma (ECCV 2024): DINOv2 + Deformable-DETR region proposer + RoIAlign region encoder + Llama.

Defaults describe the released `FoundationVision/groma-7b-*` checkpoints (DINOv2-L/14 fed 448x448, Vicuna-7B with
the 114 added tokens as native vocabulary rows, 32114 in all).
"""

from transformers import AutoConfig, Dinov2Config, LlamaConfig, PretrainedConfig

# The reference's added tokens, in the order `tokenizer.add_tokens` gave them ids after the base vocabulary: 14
# special tokens, then the proxy tokens <r0>..<r99>. The same three names in processing_groma.py hold the same
# tuples (a modeling file may not import a processing file).
GROMA_SPECIAL_TOKENS = (
    "[PAD]", "<sep>", "<img>", "</img>", "<roi>", "</roi>", "<p>", "</p>", "<image>", "<region>",
    "<refer_box>", "<ground_box>", "<refer_feat>", "[grounding]",
)  # fmt: skip
NUM_PROXY_TOKENS = 100
GROMA_PROXY_TOKENS = tuple(f"<r{j}>" for j in range(NUM_PROXY_TOKENS))
GROMA_ADDED_TOKENS = GROMA_SPECIAL_TOKENS + GROMA_PROXY_TOKENS


class GromaConfig(PretrainedConfig):
    r"""Configuration of [`GromaForConditionalGeneration`].

    Args:
        vision_config (`dict` or `Dinov2Config`): the DINOv2 image encoder. The released model keeps `image_size=518`
            (position embeddings [1, 1370, 1024]) and interpolates them to the `image_size` input.
        text_config (`dict` or `PretrainedConfig`): the Llama LLM; `vocab_size` counts the added tokens.
        image_size (`int`): side of the square input image (448).
        vision_legacy_pos_interpolation (`bool`): interpolate DINOv2 position embeddings as transformers 4.32 did
            (bicubic with `scale_factor=(n + 0.1) / sqrt(N)`), which the released weights were trained with; 5.x
            interpolates to an exact size, which moves every embedding slightly.
        proposer_*: the class-agnostic two-stage Deformable-DETR (single feature level, mixed query selection).
        proposer_feature_layers (`int`): the proposer sees the mean of the last this-many DINOv2 block outputs.
        region_feature_layers (`int`): the region encoder sees the last this-many DINOv2 block outputs, resized to
            (4, 2, 1) x the patch grid.
        region_fusion_rounds, region_gn_groups, region_roi_size, region_roi_sampling_ratio, region_pos_embed_dim:
            the region encoder (MLVLFuse + multi-level RoIAlign extractor).
        region_box_quirk (`bool`): reproduce the reference's RoI bug: normalised *cxcywh* boxes x image_size are fed
            to RoIAlign as if they were corners, with strides `patch_size / (8, 4, 2)` (2x too small for the resized
            maps). The released weights were trained that way (upstream issues #11, #21), so it is on by default and
            converted checkpoints set it; `False` feeds true corners with the maps' real strides.
        nms_threshold, box_score_threshold, max_region_num: region selection (IoU > 0.6 suppressed, score > 0.15).
        *_token_id, proxy_token_start_id, num_proxy_tokens: ids of the reference's added tokens (`<r0>` ..).
        vision_cuda_graphs (`bool`): run the static-shape vision side (DINOv2, projector, proposer, region-encoder
            fusion) through CUDA graphs captured per (batch size, dtype, device), which removes its kernel-launch
            overhead (it dominates at small batches). Only used on CUDA, in eval mode, with autograd and autocast off
            (e.g. inside `generate` or `torch.no_grad()`); everywhere else the same modules run eagerly. Results equal
            the eager ones (same kernels); the first call per batch size captures (a few eager warm-up runs). A
            runtime switch: it changes no weights or outputs.
        vision_batch_size (`int` or `None`, defaults to 16): the vision side (perceiver, region selection and
            region-feature extraction) runs on at most this many images at a time; a larger batch is cut into chunks
            before the LLM prefill, which sees the whole batch. Every image's vision outputs are independent of the
            others', so the values are the chunk size's (tested equal to one pass); it bounds the vision side's
            activation memory (batch 64 at the Groma-7B shape otherwise ran out of an 80 GB H100's memory in the
            region encoder's RoIAlign) and the CUDA graphs it captures. `None`: the whole batch at once.
    """

    model_type = "groma"
    sub_configs = {"vision_config": Dinov2Config, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        image_size=448,
        vision_legacy_pos_interpolation=True,
        proposer_d_model=256,
        proposer_encoder_layers=6,
        proposer_decoder_layers=6,
        proposer_attention_heads=8,
        proposer_ffn_dim=1024,
        proposer_n_points=4,
        proposer_num_queries=300,
        proposer_feature_layers=4,
        proposer_dropout=0.1,
        region_feature_layers=3,
        region_fusion_rounds=5,
        region_gn_groups=64,
        region_roi_size=14,
        region_roi_sampling_ratio=2,
        region_pos_embed_dim=256,
        region_box_quirk=True,
        nms_threshold=0.6,
        box_score_threshold=0.15,
        max_region_num=100,
        pad_token_id=32000,
        image_token_id=32008,
        region_token_id=32009,
        refer_box_token_id=32010,
        ground_box_token_id=32011,
        refer_feat_token_id=32012,
        proxy_token_start_id=32014,
        num_proxy_tokens=100,
        initializer_range=0.02,
        vision_cuda_graphs=True,
        vision_batch_size=16,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = Dinov2Config(
                hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=14,
                image_size=518,
            )  # fmt: skip
        elif isinstance(vision_config, dict):
            vision_config = Dinov2Config(**{k: v for k, v in vision_config.items() if k != "model_type"})
        if text_config is None:
            text_config = LlamaConfig(
                hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, vocab_size=32114,
                pad_token_id=pad_token_id, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
            )  # fmt: skip
        elif isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config = AutoConfig.for_model(text_config.pop("model_type", "llama"), **text_config)
        self.vision_config = vision_config
        self.text_config = text_config
        self.image_size = image_size
        self.vision_legacy_pos_interpolation = vision_legacy_pos_interpolation
        self.proposer_d_model = proposer_d_model
        self.proposer_encoder_layers = proposer_encoder_layers
        self.proposer_decoder_layers = proposer_decoder_layers
        self.proposer_attention_heads = proposer_attention_heads
        self.proposer_ffn_dim = proposer_ffn_dim
        self.proposer_n_points = proposer_n_points
        self.proposer_num_queries = proposer_num_queries
        self.proposer_feature_layers = proposer_feature_layers
        self.proposer_dropout = proposer_dropout
        self.region_feature_layers = region_feature_layers
        self.region_fusion_rounds = region_fusion_rounds
        self.region_gn_groups = region_gn_groups
        self.region_roi_size = region_roi_size
        self.region_roi_sampling_ratio = region_roi_sampling_ratio
        self.region_pos_embed_dim = region_pos_embed_dim
        self.region_box_quirk = region_box_quirk
        self.nms_threshold = nms_threshold
        self.box_score_threshold = box_score_threshold
        self.max_region_num = max_region_num
        self.image_token_id = image_token_id
        self.region_token_id = region_token_id
        self.refer_box_token_id = refer_box_token_id
        self.ground_box_token_id = ground_box_token_id
        self.refer_feat_token_id = refer_feat_token_id
        self.proxy_token_start_id = proxy_token_start_id
        self.num_proxy_tokens = num_proxy_tokens
        self.initializer_range = initializer_range
        self.vision_cuda_graphs = vision_cuda_graphs
        if vision_batch_size is not None and (
            isinstance(vision_batch_size, bool) or not isinstance(vision_batch_size, int) or vision_batch_size < 1
        ):
            raise ValueError(f"vision_batch_size must be a positive int or None, got {vision_batch_size!r}")
        self.vision_batch_size = vision_batch_size
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @property
    def patch_grid(self) -> int:
        """DINOv2 patches per side of the input image (32 for 448 px, patch 14)."""
        return self.image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image after the 2x2 merge: (448 / 14 / 2)^2 = 256."""
        return (self.patch_grid // 2) ** 2


GromaConfig.register_for_auto_class()
