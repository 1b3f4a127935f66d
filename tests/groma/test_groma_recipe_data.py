"""Groma recipe data: real-format loaders on tiny fixtures, conversation rendering and assistant-only labels."""

import pickle
from pathlib import Path

import pytest
import torch

from groundvlm.recipes.systems.groma import data
from tests._groma_tiny import groma_tokenizer, random_image, tiny_groma_config, tiny_groma_processor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "groma"
IMAGES = FIXTURES / "images"


def test_refcoco_json_and_pickle_opt_in(tmp_path):
    samples = data.load_refcoco(FIXTURES / "refcoco", FIXTURES / "refcoco/instances.json", IMAGES, split="val")
    assert [s["expression"] for s in samples] == ["the left dog", "dog on left"]
    assert samples[0]["gt_boxes"] == [[2.0, 3.0, 12.0, 15.0]]  # COCO xywh -> xyxy
    assert samples[0]["messages"] == [{"role": "user", "content": "Locate <p>the left dog</p> in the image."}]
    train = data.load_refcoco(
        FIXTURES / "refcoco", FIXTURES / "refcoco/instances.json", IMAGES, split="train", train=True
    )
    assert train[0]["messages"][1]["content"] == "<roi><ground_box></roi>" and train[0]["ground_boxes"] == [
        [20.0, 5.0, 35.0, 25.0]
    ]
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps(__import__("json").loads((FIXTURES / "refcoco/refs(unc).json").read_text())))
    with pytest.raises(ValueError, match="pickle"):
        data.load_refcoco(refs, FIXTURES / "refcoco/instances.json", IMAGES)
    assert len(data.load_refcoco(refs, FIXTURES / "refcoco/instances.json", IMAGES, allow_pickle=True)) == 2


def test_flickr30k_entities_grounded_caption():
    (sample,) = data.load_flickr30k_entities(FIXTURES / "flickr", IMAGES)
    answer = sample["messages"][1]["content"]
    # entity 1 has two boxes, entity 9 none (its phrase stays plain text)
    assert (
        answer
        == "<p>A man</p><roi><ground_box><ground_box></roi> in <p>a red hat</p><roi><ground_box></roi> walks nowhere ."
    )
    assert sample["ground_boxes"] == [[1.0, 2.0, 20.0, 28.0], [22.0, 2.0, 38.0, 28.0], [5.0, 2.0, 12.0, 8.0]]
    assert sample["messages"][0]["content"] == data.GROUNDED_CAPTION_INSTRUCTION


def test_vg_lvis_and_conversations():
    (vg,) = data.load_vg_regions(FIXTURES / "vg/region_descriptions.json", IMAGES, max_regions=2)
    assert [m["content"] for m in vg["messages"] if m["role"] == "assistant"] == ["A small window", "Green door"]
    assert vg["refer_boxes"] == [[1.0, 2.0, 11.0, 10.0], [15.0, 2.0, 25.0, 10.0]]
    lvis = data.load_lvis(FIXTURES / "lvis/lvis_v1_val.json", IMAGES)
    assert [(s["messages"][0]["content"], len(s["gt_boxes"])) for s in lvis] == [
        ("Locate all <p>teddy bear</p> in this image.", 2),
        ("Locate all <p>cup</p> in this image.", 1),
    ]
    (llava,) = data.load_conversations(FIXTURES / "conversations/llava.json", IMAGES)
    assert llava["messages"][0] == {"role": "user", "content": "What is in the image?"}
    (groma,) = data.load_conversations(FIXTURES / "conversations/groma_instruct.json", IMAGES)
    assert groma["messages"][0]["content"].startswith("[grounding]Where")
    assert groma["ground_boxes"] == [[1.0, 2.0, 11.0, 10.0], [15.0, 2.0, 25.0, 10.0]]


@pytest.fixture(scope="module")
def processor():
    tok = groma_tokenizer()
    return tiny_groma_processor(tok, tiny_groma_config(tok))


def _supervised(processor, batch, i):
    labels = batch["labels"][i]
    return processor.tokenizer.decode(labels[labels != -100])


def test_labels_only_on_assistant_turns(processor):
    sample = data.chat(random_image(60, 80), "rec", [("What is this?", "red star"), ("Where is the red star on the left?",
                       "<roi><ground_box></roi>")], ground=[[0, 0, 40, 30]])  # fmt: skip
    llava = data.GromaChatCollator(processor, "llava")([sample])
    assert _supervised(processor, llava, 0).replace(" ", "") == "redstar</s><roi><ground_box></roi></s>"
    default = data.GromaChatCollator(processor, "default")([sample])
    assert "</s>" not in processor.tokenizer.decode(default["input_ids"][0])
    assert _supervised(processor, default, 0).replace(" ", "") == "redstar<roi><ground_box></roi>"
    torch.testing.assert_close(llava["ground_boxes"][0], torch.tensor([[0.25, 0.25, 0.5, 0.5]]))


def test_toy_chats_align_and_instruct_tasks():
    world = data.ToyWorld(0)
    align = data.toy_chats(world, 2, "align")
    assert [s["task"] for s in align[:4]] == ["rec", "grounded_caption", "caption", "region_caption"]
    for s in align + data.toy_chats(world, 2, "instruct"):
        answers = " ".join(m["content"] for m in s["messages"] if m["role"] == "assistant")
        questions = " ".join(m["content"] for m in s["messages"] if m["role"] == "user")
        assert answers.count("<ground_box>") == len(s["ground_boxes"])
        assert questions.count("<refer>") == len(s["refer_boxes"])


def test_source_batches_are_single_source():
    sources = ["coco", "sa1b"] * 9
    batches = list(data.SourceBatchSampler(sources, 4, seed=0))
    chunks = [batches[i : i + 4] for i in range(0, len(batches), 4)]
    assert len(chunks) == 4 and all(len({sources[j] for j in c}) == 1 for c in chunks)
    assert batches == list(data.SourceBatchSampler(sources, 4, seed=0))
