"""Greedy decoding with a static KV cache, one CUDA graph per token: the decoding loop of gpt-fast-style inference.

transformers' `generate` with a static cache compiles the model's forward and replays it as a CUDA graph, but every
token still passes through its Python loop (input preparation, logits processors, stopping criteria, `torch.cat` of
the ids). Here one decoding step — embed the last token, mark its slot
in the attention mask, the LLM forward into the static cache, the greedy choice, the stop bookkeeping — reads and
writes only preallocated tensors, so on CUDA it is compiled once (`torch.compile`, no CUDA graphs of its own) and
captured whole into one `torch.cuda.CUDAGraph`; each further token is one `replay()`. Whether every sequence has
stopped is copied to pinned host memory without blocking and read when that copy has landed, so the host never
waits on the GPU inside the loop (at most a few extra steps are run after the last sequence stops; their tokens are
dropped). Measured on a 7B shape (benchmarks/RESULTS.md, "Groma's own greedy loop"): the same tokens, +2.6 % decode
at batch 1 on an H100 (the step itself is GPU-bound there), 1.4x on the CPU's tiny config (host-bound).

What it covers is what `generate` does for greedy search with a static cache and only the length/stop settings
(`max_new_tokens`/`max_length`, `min_new_tokens`/`min_length`, `eos_token_id`, `pad_token_id`): the same tokens, the
same lengths, the same padding after a sequence stops, the cache handed back with `return_dict_in_generate=True`.
`static_greedy_settings` says whether a call is of that kind; anything else (sampling, beams, logits processors,
stopping criteria, streamers, scores, a cache passed in, ...) stays with transformers. Off CUDA the same loop runs
eagerly (no compile, no graph). The prefill runs over the prompt's unmasked tokens only (`_compact_prefill`: Groma's
unused region pairs would otherwise keep it off SDPA's causal kernel) and fills the static cache as the full prefill
would.
"""

from __future__ import annotations

import inspect
import warnings
from collections import deque
from dataclasses import dataclass

import torch
from transformers import StaticCache
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

# `generate` arguments that only set what the loop implements (anything else keeps transformers' loop).
_PLAIN_GENERATE_KWARGS = {
    "max_new_tokens",
    "min_new_tokens",
    "max_length",
    "min_length",
    "do_sample",
    "num_beams",
    "use_cache",
    "cache_implementation",
    "pad_token_id",
    "eos_token_id",
    "bos_token_id",
    "return_dict_in_generate",
}
# GenerationConfig fields the loop reads itself, or that greedy search ignores (transformers applies the sampling
# parameters only with `do_sample`).
_FREE_FIELDS = _PLAIN_GENERATE_KWARGS | {
    "temperature",
    "top_p",
    "top_k",
    "decoder_start_token_id",
    "transformers_version",
    "_from_model_config",
    "_commit_hash",
    "_original_object_hash",
}
# Values that change nothing in greedy search where the global default is None (transformers applies most
# processors whenever a value is set, so only these count, besides None and the global defaults).
_NEUTRAL = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "typical_p": 1.0,
    "num_beam_groups": 1,
    "num_return_sequences": 1,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "diversity_penalty": 0.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "guidance_scale": 1.0,
}
# Boolean flags whose False is what the loop does.
_FLAGS = {
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "return_dict_in_generate",
    "renormalize_logits",
    "remove_invalid_values",
    "token_healing",
    "low_memory",
    "early_stopping",
    "is_assistant",
    "disable_compile",
}
# Cache lengths are rounded up to a multiple of this, so prompts of similar length share one compiled step and
# one captured graph (the extra slots stay masked: the decode step reads at most this many more KV positions).
CACHE_LENGTH_MULTIPLE = 128


@dataclass(frozen=True)
class StaticGreedySettings:
    """What one greedy call asks for: new tokens (at most / at least), stop and pad ids, whether to return a dict."""

    max_new_tokens: int
    min_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    return_dict: bool


def static_greedy_settings(model, generate_kwargs: dict, prompt_length: int) -> StaticGreedySettings | None:
    """The settings of a `generate(**generate_kwargs)` call if the static greedy loop reproduces it, else None.

    The call's generation config is merged as transformers merges it (`model._prepare_generation_config`: the
    passed `generation_config` or kwargs over `model.generation_config` over the global defaults). The loop takes it
    when it asks for greedy search (one beam, no sampling) with the KV cache and a static cache, gives the length
    as `max_new_tokens` (in either config) or `max_length` (passed to this call), and sets nothing else that changes
    transformers' output: every other field is unset (None), at its global default, or a value that changes nothing
    in greedy search."""
    if not set(generate_kwargs) <= _PLAIN_GENERATE_KWARGS | {"generation_config"}:
        return None
    kwargs = {k: v for k, v in generate_kwargs.items() if k != "generation_config"}
    config, model_kwargs = model._prepare_generation_config(generate_kwargs.get("generation_config"), **kwargs)
    if model_kwargs:
        return None
    defaults = config._get_default_generation_params()
    for key, value in config.to_dict().items():
        if key in _FREE_FIELDS or value is None or value == defaults.get(key, object()):
            continue
        if _NEUTRAL.get(key, object()) == value or (value is False and key in _FLAGS):
            continue
        return None
    if config.do_sample or config.num_beams != 1 or not config.use_cache:
        return None
    if config.cache_implementation != "static" or getattr(config, "disable_compile", False):
        return None
    if config.max_new_tokens is not None:
        max_new = config.max_new_tokens
    elif "max_length" in kwargs:
        max_new = config.max_length - prompt_length
    else:
        return None  # the default length: transformers' own rules for it (prompt embeddings, position limits)
    if max_new < 1:
        return None  # transformers' own error/warning path
    eos = config.eos_token_id
    eos = () if eos is None else tuple(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    # transformers: `min_new_tokens` (when set) wins over `min_length`, which counts the prompt
    min_new = config.min_new_tokens if config.min_new_tokens is not None else (config.min_length or 0) - prompt_length
    return StaticGreedySettings(max_new, max(min_new, 0), eos, int(pad), bool(config.return_dict_in_generate))


class _State:
    """The preallocated tensors one decoding step reads and writes (fixed addresses: a captured graph uses them)."""

    def __init__(self, batch: int, cache_length: int, num_eos: int, device: torch.device):
        long = dict(dtype=torch.long, device=device)
        self.token = torch.zeros(batch, 1, **long)  # the last token, fed to the next step
        self.mask = torch.zeros(batch, cache_length, **long)  # the attention mask over the whole cache
        self.position = torch.zeros(batch, 1, **long)  # the RoPE position of the last token
        self.slot = torch.zeros(1, **long)  # the cache slot of the last token
        self.step = torch.zeros(1, **long)  # how many tokens were generated
        # the generated tokens (as long as the cache: their number then changes no shape, so no recompile)
        self.tokens = torch.zeros(batch, cache_length, **long)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.all_finished = torch.zeros(1, dtype=torch.bool, device=device)
        self.eos = torch.zeros(max(num_eos, 1), **long)
        self.min_new = torch.zeros(1, **long)
        self.pad = torch.zeros(1, **long)


# Inductor's coordinate-descent tuning of the step's kernels (block sizes of the batch-1 matrix-vector products):
# one H100, 7B-shape Llama, bf16, batch 1, `benchmarks/greedy_step_tuning.py`: 6.39 -> 5.37 ms a step (0.62 -> 0.74 of
# the HBM roofline) for 30 -> 53 s of compile time, once per (batch, cache length) (benchmarks/RESULTS.md, Groma speed).
DEFAULT_COMPILE_OPTIONS = {"coordinate_descent_tuning": True}


class StaticGreedyDecoder:
    """The greedy loop for one decoder-only LLM (`llm(inputs_embeds=..., attention_mask=..., position_ids=...,
    <cache keyword>=StaticCache, logits_to_keep=1)`, as a transformers `*ForCausalLM`). Keeps the state, the
    compiled step and the captured graph of the last (batch, cache length) between calls."""

    def __init__(self, llm: torch.nn.Module, warmup_steps: int = 2, compile_options=DEFAULT_COMPILE_OPTIONS):
        self.llm, self.cache_kwarg, self.warmup_steps = llm, cache_kwarg_of(llm), warmup_steps
        # inductor options for the step (`torch.compile(options=...)`); None: inductor's defaults
        self.compile_options = None if compile_options is None else dict(compile_options)
        self.key = self.state = self.cache = self.graph = None
        self.compiled = None
        self.capturable = True  # False once a capture failed: compiled steps without a graph from then on
        self.graphs_used = 0  # graph replays in the last call (0: eager)

    # ----------------------------------------------------------------------------------------- the step
    def _choose(self, logits: torch.Tensor, state: _State) -> None:
        """Greedy choice for the token `state.step` from (batch, vocab) fp32 logits, then the stop bookkeeping."""
        if self.num_eos:
            blocked = state.step < state.min_new  # MinNewTokensLengthLogitsProcessor: no stop before min_new
            eos_logits = logits.index_select(1, state.eos)
            logits = logits.index_copy(1, state.eos, torch.where(blocked, float("-inf"), eos_logits))
        token = logits.argmax(-1)
        token = torch.where(state.finished, state.pad, token)
        state.tokens.index_copy_(1, state.step, token[:, None])
        state.token.copy_(token[:, None])
        if self.num_eos:
            state.finished.logical_or_(torch.isin(token, state.eos))
            state.all_finished.copy_(state.finished.all())
        state.step.add_(1)

    def _decode_step(self, state: _State, cache) -> None:
        """One token: feed `state.token` at `state.slot` + 1, choose the next one."""
        state.slot.add_(1)
        state.position.add_(1)
        state.mask.index_fill_(1, state.slot, 1)
        embeds = self.llm.get_input_embeddings()(state.token)
        out = self.llm(
            inputs_embeds=embeds,
            attention_mask=state.mask,
            position_ids=state.position,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kwarg: cache},
        )
        self._choose(out.logits[:, -1].float(), state)

    # ----------------------------------------------------------------------------------------- setup
    def _prepare(self, batch: int, cache_length: int, settings: StaticGreedySettings, dtype, device) -> None:
        # The weights' addresses are part of the key: a captured graph reads them, so weights replaced (not updated
        # in place) or moved make a new graph.
        weights = tuple(p.data_ptr() for p in self.llm.parameters())
        key = (batch, cache_length, len(settings.eos_token_ids), dtype, device, weights)
        self.num_eos = len(settings.eos_token_ids)
        if key == self.key and self.cache is not None:
            # Only the lengths: the prefill overwrites the prompt's slots and the mask hides every slot after the
            # last token, so the old keys and values are never read (zeroing them would cost ~1 ms at batch 8).
            for layer in self.cache.layers:
                if getattr(layer, "is_initialized", False):
                    layer.cumulative_length.zero_()
            self.state.finished.zero_()
            self.state.all_finished.zero_()
            self.state.mask.zero_()
            return
        self.graph = None  # frees the old graph's memory pool before the new state is allocated
        self.key, self.state = key, _State(batch, cache_length, self.num_eos, device)
        self.cache = StaticCache(config=self.llm.config, max_cache_len=cache_length)
        if device.type == "cuda" and self.compiled is None:
            self.compiled = torch.compile(
                self._decode_step, fullgraph=True, dynamic=False, options=self.compile_options
            )

    def _warm_step(self) -> None:
        """One real decoding step through the compiled step, on a side stream (what capturing wants first). If the
        step cannot be compiled (tracing fails before anything runs), the eager step is used from then on."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            try:
                self.compiled(self.state, self.cache)
            except torch._dynamo.exc.TorchDynamoException as error:  # raised while compiling, before the step ran
                if self.compiled == self._decode_step:
                    raise
                warnings.warn(
                    f"static greedy decoding: the step does not compile ({error!r}); decoding eagerly", stacklevel=3
                )
                self.compiled = self._decode_step
                self.compiled(self.state, self.cache)
        torch.cuda.current_stream().wait_stream(stream)

    def _capture(self) -> None:
        """Capture one step into a CUDA graph (records, runs nothing); if the step cannot be captured, no graph from
        then on (compiled steps without one)."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.compiled(self.state, self.cache)
        except Exception as error:  # e.g. a host sync inside the step
            warnings.warn(
                f"static greedy decoding: the step cannot be captured in a CUDA graph ({error!r})", stacklevel=3
            )
            self.capturable = False
            return
        self.graph = graph

    # ----------------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, settings: StaticGreedySettings
    ) -> tuple[torch.Tensor, object]:
        """(batch, new tokens) greedy tokens after the prompt embeddings (left padding allowed: `attention_mask` 0),
        and the cache (None unless `settings.return_dict`: then it is the caller's, holding prompt + tokens - 1)."""
        batch, prompt_length = attention_mask.shape
        device, dtype = inputs_embeds.device, inputs_embeds.dtype
        max_new = settings.max_new_tokens
        needed = prompt_length + max_new
        cache_length = -(-needed // CACHE_LENGTH_MULTIPLE) * CACHE_LENGTH_MULTIPLE
        self._prepare(batch, cache_length, settings, dtype, device)
        state, cache = self.state, self.cache
        state.eos.copy_(torch.tensor(settings.eos_token_ids or (0,), device=device))
        state.min_new.fill_(settings.min_new_tokens)
        state.pad.fill_(settings.pad_token_id)
        state.step.zero_()
        state.mask[:, :prompt_length].copy_(attention_mask)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

        # Prefill (eager, as transformers' prefill): the prompt into the cache, the first token.
        # (one host read: how many tokens the longest row keeps, and whether every row ends unmasked)
        kept, ends_unmasked = torch.stack((attention_mask.sum(1).max(), attention_mask[:, -1].min())).tolist()
        if kept and ends_unmasked and all(type(layer) is StaticLayer for layer in cache.layers):
            out = self._compact_prefill(inputs_embeds, attention_mask, positions, kept)
        else:
            # sliding-window layers; a masked last position (transformers reads the first token's logits there, the
            # compacted prompt has no such position); an empty mask: the prompt through the static cache itself
            out = self.llm(
                inputs_embeds=inputs_embeds,
                attention_mask=state.mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_kwarg: cache},
            )
        self._choose(out.logits[:, -1].float(), state)
        state.position.copy_(positions[:, -1:])
        state.slot.fill_(prompt_length - 1)

        steps = self._decode(max_new)
        tokens = state.tokens[:, :steps]
        length = steps
        if self.num_eos:
            stopped = torch.isin(tokens, state.eos[: self.num_eos])
            if bool(stopped.any(-1).all()):
                length = int(stopped.long().argmax(-1).max()) + 1
        tokens = tokens[:, :length].clone()
        if not settings.return_dict:
            return tokens, None
        handed = self.cache
        for layer in handed.layers:
            layer.cumulative_length.fill_(prompt_length + length - 1)
        self.key = self.cache = self.graph = None  # the caller owns that cache now: the next call builds its own
        return tokens, handed

    def _compact_prefill(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, kept: int
    ):
        """The prefill over the prompt's unmasked tokens only, written into the static cache at their own slots.

        Through the static cache the prefill attends over the whole cache length with an explicit mask, which keeps
        SDPA off its causal (flash) kernel — and Groma's prompt always holds masked slots (the region pairs beyond
        the selected regions). Here the unmasked tokens of each row are gathered to the right end of a shorter
        sequence (rows with fewer keep left padding), positions as before; each layer's keys and values go into the
        static cache at the slots they came from and attention sees only the prompt's own, so an unpadded row runs
        the causal kernel over fewer tokens. The cache ends as the full prefill leaves it on every unmasked slot
        (masked slots are never read); the decoding steps are unchanged. `kept`: the most unmasked tokens of a row
        (> 0); every row's last position must be unmasked (its logits give the first token)."""
        length = attention_mask.shape[1]
        # per row: the masked slots first, then the unmasked in order (a stable sort); keep the last `kept`
        slots = torch.sort(attention_mask.long(), dim=1, stable=True).indices[:, length - kept :]
        embeds = inputs_embeds.gather(1, slots[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
        cache = Cache(layers=[_WriteIntoStatic(layer, slots) for layer in self.cache.layers])
        out = self.llm(
            inputs_embeds=embeds,
            attention_mask=attention_mask.gather(1, slots),
            position_ids=positions.gather(1, slots),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kwarg: cache},
        )
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(length)
        return out

    def _decode(self, max_new: int) -> int:
        """Run decoding steps until `max_new` tokens or every sequence stopped; returns the steps taken (incl. the
        prefill's token)."""
        state, done = self.state, 1
        self.graphs_used = 0
        if self.num_eos and bool(state.all_finished):  # every sequence stopped at its first token
            return done
        if state.tokens.device.type != "cuda":
            while done < max_new:
                self._decode_step(state, self.cache)
                done += 1
                if self.num_eos and bool(state.all_finished):
                    break
            return done
        pending: deque = deque()  # (event, pinned copy of `all_finished`) per step, oldest first
        while done < max_new:
            if self.graph is None and done > self.warmup_steps and self.capturable:
                self._capture()  # records without running: replayed below for this step
            if self.graph is not None:
                self.graph.replay()
                self.graphs_used += 1
            else:
                self._warm_step()
            done += 1
            if self.num_eos:
                flag = torch.empty(1, dtype=torch.bool, pin_memory=True)
                flag.copy_(state.all_finished, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                pending.append((event, flag))
                while pending and pending[0][0].query():
                    if bool(pending.popleft()[1]):
                        return done
        return done


class _WriteIntoStatic(DynamicLayer):
    """A prefill-only cache layer: each `update` scatters the prompt's keys and values into `target` (a static
    layer) at `slots` (batch, prompt tokens) and returns them as they are — attention sees the prompt alone, and no
    second copy is kept (it stays uninitialised: no past tokens, a mask over the prompt only)."""

    def __init__(self, target: StaticLayer, slots: torch.Tensor):
        super().__init__()
        self.target, self.slots = target, slots

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.target.is_initialized:
            self.target.lazy_initialization(key_states, value_states)
        for stored, new in ((self.target.keys, key_states), (self.target.values, value_states)):
            stored.scatter_(2, self.slots[:, None, :, None].expand_as(new), new.to(stored.dtype))
        return key_states, value_states


def cache_kwarg_of(llm: torch.nn.Module) -> str:
    """The keyword under which the installed transformers passes a cache to a `*ForCausalLM`."""
    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"
