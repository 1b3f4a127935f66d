"""Groma's `generate` defers transformers' per-token stop check on CUDA (modeling/groma_deferred_stop.py): the rule is
widened only inside the call, restored afterwards (also after an error, and only when the last of nested calls ends),
never for assisted decoding or a returned cache that cannot be cropped, and the saved remote code carries the file.
The deferred check itself needs CUDA events (its token equality is checked on the GPU by benchmarks/groma_speed.py)."""

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.utils import DeferredStopCheck

from groundvlm.modeling import groma_deferred_stop
from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from tests._groma_tiny import tiny_groma_config
from tests.groma.test_groma_model import left_pad, static_prompt

CUDA = torch.device("cuda")  # a device object only: nothing runs on it


class _Croppable:
    is_croppable = True


class _NotCroppable:
    is_croppable = False


def deferred_on(device=CUDA, cache=None, returned=False, assistant=False) -> bool:
    return DeferredStopCheck.is_supported(device, cache, returned, assistant)


def test_only_inside_the_block_and_only_where_it_is_safe():
    assert not deferred_on()  # transformers' own rule: MPS only
    original = DeferredStopCheck.__dict__["is_supported"]
    with groma_deferred_stop.deferred_stop_check() as active:
        assert active
        assert deferred_on()
        assert deferred_on(cache=_NotCroppable())  # a cache that is not returned is dropped anyway
        assert deferred_on(cache=_Croppable(), returned=True)
        assert not deferred_on(cache=_NotCroppable(), returned=True)  # the extra step could not be undone
        assert not deferred_on(assistant=True)
        assert not deferred_on(device=torch.device("cpu"))  # no CPU events: transformers' rule again
    assert DeferredStopCheck.__dict__["is_supported"] is original
    assert not deferred_on()


def test_nested_blocks_restore_once_and_errors_restore_too():
    original = DeferredStopCheck.__dict__["is_supported"]
    with groma_deferred_stop.deferred_stop_check():
        with groma_deferred_stop.deferred_stop_check():
            assert deferred_on()
        assert deferred_on()  # the outer call is still running
    assert DeferredStopCheck.__dict__["is_supported"] is original
    with pytest.raises(RuntimeError, match="boom"):
        with groma_deferred_stop.deferred_stop_check():
            raise RuntimeError("boom")
    assert DeferredStopCheck.__dict__["is_supported"] is original


class _RecordRule(LogitsProcessor):
    """Records, at every step, whether a CUDA generate would defer its stop check right now."""

    def __init__(self):
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append(deferred_on())
        return scores


@pytest.fixture(scope="module")
def groma():
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(tiny_groma_config()).eval()
    ids, mask = left_pad([static_prompt(model.config)], model.config.pad_token_id)
    return model, {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(1, 3, 112, 112)}


@pytest.mark.parametrize("defer", [True, False])
def test_generate_turns_it_on_for_its_own_duration(groma, defer):
    model, inputs = groma
    recorder = _RecordRule()
    out = model.generate(
        **inputs,
        max_new_tokens=3,
        do_sample=False,
        defer_stop_check=defer,
        logits_processor=LogitsProcessorList([recorder]),
    )
    assert recorder.seen == [defer] * 3
    assert not deferred_on()
    reference = model.generate(**inputs, max_new_tokens=3, do_sample=False, defer_stop_check=not defer)
    assert torch.equal(out, reference)


def test_text_only_generate_defers_too(groma):
    model, _ = groma
    recorder = _RecordRule()
    model.generate(input_ids=torch.tensor([[1, 5, 6]]), max_new_tokens=2, do_sample=False,
                   logits_processor=LogitsProcessorList([recorder]))  # fmt: skip
    assert recorder.seen == [True, True]


def test_saved_remote_code_carries_the_module(groma, tmp_path):
    model, _ = groma
    model.save_pretrained(tmp_path)
    assert (tmp_path / "groma_deferred_stop.py").is_file()
