"""The `generate` of Groma, VPGTrans and PIN defers transformers' per-token stop check on the current CUDA device
(modeling/deferred_stop.py): only inside the call and only in its own context, never for assisted decoding, a
returned cache that cannot be cropped, another CUDA device than the current one, or `synced_gpus`; and the deferred
path itself (its extra forward after an early stop, undone by `finish`) gives the per-token path's sequences, scores,
cache length and streamed tokens. Off CUDA the deferred check needs device events, so the last test runs it on the CPU
with a stand-in event (exact there: CPU work is synchronous)."""

import threading
from functools import partial

import pytest
import torch
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import DeferredStopCheck

from groundvlm.modeling import deferred_stop
from tests._groma_tiny import tiny_groma_left_padded_batch
from tests._pin_tiny import tiny_pin_with_inputs
from tests._vpgtrans_toys import tiny_vpgtrans_with_prompts


class _Croppable:
    is_croppable = True


class _NotCroppable:
    is_croppable = False


@pytest.fixture
def cuda_current(monkeypatch):
    """Pretend cuda:0 is this process's current CUDA device (nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def deferred_on(device="cuda", cache=None, returned=False, assistant=False) -> bool:
    return DeferredStopCheck.is_supported(torch.device(device), cache, returned, assistant)


def test_only_inside_the_block_and_only_where_it_is_safe(cuda_current):
    assert not deferred_on()  # transformers' own rule: MPS only
    with deferred_stop.deferred_stop_check() as active:
        assert active
        assert deferred_on() and deferred_on("cuda:0")
        assert not deferred_on("cuda:1")  # events would be recorded on cuda:0's stream
        assert deferred_on(cache=_NotCroppable())  # a cache that is not returned is dropped anyway
        assert deferred_on(cache=_Croppable(), returned=True)
        assert not deferred_on(cache=_NotCroppable(), returned=True)  # the extra step could not be undone
        assert not deferred_on(assistant=True)
        assert not deferred_on("cpu")
        assert deferred_on("mps")  # transformers' rule, unchanged
    assert not deferred_on() and deferred_on("mps")
    with deferred_stop.deferred_stop_check(enabled=False) as active:
        assert not active and not deferred_on()


def test_nested_blocks_errors_and_other_threads(cuda_current):
    with deferred_stop.deferred_stop_check():
        with deferred_stop.deferred_stop_check():
            assert deferred_on()
        assert deferred_on()  # the outer call is still running
        seen = []
        other = threading.Thread(target=lambda: seen.append(deferred_on()))
        other.start()
        other.join()
        assert seen == [False]  # another thread's generate keeps transformers' rule
    assert not deferred_on()
    with pytest.raises(RuntimeError, match="boom"):
        with deferred_stop.deferred_stop_check():
            raise RuntimeError("boom")
    assert not deferred_on()


def test_a_second_copy_of_the_module_reuses_the_installed_wrapper():
    with deferred_stop.deferred_stop_check():
        installed = DeferredStopCheck.__dict__["is_supported"]
    assert deferred_stop._flag(DeferredStopCheck) is getattr(installed.__func__, deferred_stop._MARK)
    assert DeferredStopCheck.__dict__["is_supported"] is installed  # no second wrapper around the first


class _RecordRule(LogitsProcessor):
    """Records, at every step, whether a generate on the current CUDA device would defer right now."""

    def __init__(self):
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append(deferred_on())
        return scores


@pytest.fixture(scope="module")
def groma():
    return tiny_groma_left_padded_batch()


@pytest.mark.parametrize("defer", [True, False])
def test_generate_turns_it_on_for_its_own_duration(groma, cuda_current, defer):
    model, inputs = groma
    recorder = _RecordRule()
    model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, defer_stop_check=defer,
                   logits_processor=LogitsProcessorList([recorder]))  # fmt: skip
    assert recorder.seen == [defer] * 3
    assert not deferred_on()
    recorder = _RecordRule()
    model.generate(input_ids=inputs["input_ids"][:, :3], max_new_tokens=2, min_new_tokens=2, do_sample=False,
                   defer_stop_check=defer, logits_processor=LogitsProcessorList([recorder]))  # fmt: skip
    assert recorder.seen == [defer] * 2  # text-only generation too


@pytest.mark.parametrize(
    "build",
    [tiny_vpgtrans_with_prompts, partial(tiny_pin_with_inputs, "blip2"), partial(tiny_pin_with_inputs, "llava")],
    ids=["vpgtrans", "pin-blip2", "pin-llava"],
)
@pytest.mark.parametrize("defer", [True, False])
def test_vpgtrans_and_pin_generate_too(build, defer, cuda_current):
    model, inputs = build()
    recorder = _RecordRule()
    model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False, defer_stop_check=defer,
                   logits_processor=LogitsProcessorList([recorder]))  # fmt: skip
    assert recorder.seen == [defer] * 2
    assert not deferred_on()


def test_synced_gpus_does_not_defer(groma, cuda_current):
    model, inputs = groma
    recorder = _RecordRule()
    model.generate(input_ids=inputs["input_ids"][:, :3], max_new_tokens=2, min_new_tokens=2, do_sample=False,
                   synced_gpus=False, logits_processor=LogitsProcessorList([recorder]))  # fmt: skip
    assert recorder.seen == [True, True]
    with pytest.MonkeyPatch.context() as mp:  # synced_gpus=True needs a process group: only the decision is checked
        mp.setattr(GenerationMixin, "generate", lambda self, *a, **k: deferred_on())
        assert model.generate(input_ids=inputs["input_ids"][:, :3], synced_gpus=True) is False
        assert model.generate(input_ids=inputs["input_ids"][:, :3]) is True


class _StopAt(LogitsProcessor):
    """Row r writes `eos` at its `stops[r]`-th new token (the rest is the model's own greedy choice)."""

    def __init__(self, prompt_length: int, stops: list[int], eos: int):
        self.prompt_length, self.stops, self.eos = prompt_length, stops, eos

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        for row, stop in enumerate(self.stops):
            if step == stop:
                scores[row] = -float("inf")
                scores[row, self.eos] = 0.0
        return scores


class _Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        pass


class _HostEvent:
    """A device event for the CPU, where every copy has already finished when the next line runs."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args):
        pass

    def synchronize(self):
        pass


def test_the_deferred_path_gives_the_per_token_paths_outputs(groma, monkeypatch):
    model, inputs = groma
    built = []
    init = DeferredStopCheck.__init__

    def spy(self, *args, **kwargs):
        built.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(DeferredStopCheck, "__init__", spy)
    monkeypatch.setattr(torch, "Event", _HostEvent)
    monkeypatch.setattr(deferred_stop, "_defers_on", lambda device: device.type == "cpu")
    eos = 3
    runs = {}
    for defer in (False, True):
        streamer = _Collect()
        out = model.generate(
            **inputs,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=model.config.pad_token_id,
            return_dict_in_generate=True,
            output_scores=True,
            streamer=streamer,
            defer_stop_check=defer,
            logits_processor=LogitsProcessorList([_StopAt(inputs["input_ids"].shape[1], [2, 4], eos)]),
        )
        cache = out.get("cache", out.get("past_key_values"))
        runs[defer] = (out.sequences, torch.stack(out.scores), cache.get_seq_length(), streamer.chunks)
        assert len(built) == int(defer)  # the deferred check really ran, and only when asked for
    (seq, scores, length, chunks), (seq_d, scores_d, length_d, chunks_d) = runs[False], runs[True]
    new = seq.shape[1] - inputs["input_ids"].shape[1]
    assert new == 5 and seq[1, -1] == eos  # stopped early (row 1 at its 5th token), below max_new_tokens
    assert torch.equal(seq, seq_d) and torch.equal(scores, scores_d)
    assert length == length_d == seq.shape[1] - 1  # the extra forward's cache entries are gone
    assert len(chunks) == len(chunks_d) and all(torch.equal(a, b) for a, b in zip(chunks, chunks_d))
