"""Groma recipe training pieces: detection matching / losses on hand cases and a tiny overfit, ground-box
resolution, stage freezing, evaluation metrics on hand cases."""

import pytest
import torch
from PIL import Image

from groundvlm.modeling import GromaForConditionalGeneration
from groundvlm.recipes.systems.groma import data, evaluation, models, training
from tests._groma_tiny import groma_tokenizer, random_image, tiny_groma_config, tiny_groma_processor


def test_matcher_assigns_by_box_cost():
    matcher = training.detection_criterion().matcher
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]]])
    targets = [
        {
            "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.21, 0.2, 0.1, 0.1]]),
            "class_labels": torch.zeros(2, dtype=torch.long),
        }
    ]
    ((pred, tgt),) = matcher({"logits": torch.zeros(1, 3, 1), "pred_boxes": boxes}, targets)
    assert dict(zip(tgt.tolist(), pred.tolist())) == {0: 1, 1: 0}


def test_detection_loss_terms_and_overfit():
    tok = groma_tokenizer()
    config = tiny_groma_config(tok, proposer_dropout=0.0)
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(config)
    models.freeze_for_stage(model, "det")
    assert all(n.startswith("region_proposer.") for n, p in model.named_parameters() if p.requires_grad)
    processor = tiny_groma_processor(tok, config)
    image = Image.fromarray((torch.rand(112, 112, 3) * 255).byte().numpy())
    batch = data.DetectionCollator(processor.image_processor, flip=False)(
        [{"image": image, "boxes": [[10, 10, 50, 60], [60, 20, 100, 100]], "source": "sa1b"}]
    )
    loss, terms = training.detection_loss(model, batch["pixel_values"], batch["targets"], "sa1b")
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_ce_enc", "loss_giou_enc"} <= set(terms)
    coco_before = model.region_proposer.class_embed_coco[-1].weight.clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = loss.item()
    for _ in range(25):
        optimizer.zero_grad()
        loss, _ = training.detection_loss(model, batch["pixel_values"], batch["targets"], "sa1b")
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.75 * first
    # an SA-1B batch trains the SA-1B head only (weight decay aside, the COCO head gets no gradient)
    assert (
        model.region_proposer.class_embed_coco[-1].weight.grad is None
        or not model.region_proposer.class_embed_coco[-1].weight.grad.any()
    )
    torch.testing.assert_close(model.region_proposer.class_embed_coco[-1].weight, coco_before, rtol=0, atol=1e-6)


def test_ground_box_becomes_proxy_token_in_ids_and_labels():
    tok = groma_tokenizer()
    # proposals never pass the threshold, so the target box (score 0.2) is region 0
    config = tiny_groma_config(tok, box_score_threshold=0.19, proposer_dropout=0.0)
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for head in (model.region_proposer.class_embed_coco[-1], model.region_proposer.class_embed_sa1b[-1]):
            head.bias.fill_(-20.0)
    processor = tiny_groma_processor(tok, config)
    sample = data.chat(random_image(112, 112), "rec", [("What is this?", "<roi><ground_box></roi>")],
                       ground=[[10, 20, 50, 90]])  # fmt: skip
    batch = data.GromaChatCollator(processor, "llava")([sample])
    prepared = model.prepare_multimodal_inputs(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                               ground_boxes=batch["ground_boxes"])  # fmt: skip
    r0 = tok.convert_tokens_to_ids("<r0>")
    ground = batch["input_ids"] == config.ground_box_token_id
    assert (prepared.input_ids[ground] == r0).all()
    torch.testing.assert_close(prepared.region_boxes[0][0], torch.tensor([10, 20, 50, 90]) / 112.0)
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_align_freezes_llm_but_trains_new_token_rows():
    tok = groma_tokenizer()
    model = GromaForConditionalGeneration(tiny_groma_config(tok))
    models.freeze_for_stage(model, "align")
    embed = model.language_model.get_input_embeddings().weight
    (embed.sum() * 1.0).backward()
    start = models.new_token_rows(model)
    assert not embed.grad[:start].any() and embed.grad[start:].all()
    assert not any(p.requires_grad for n, p in model.language_model.named_parameters() if "layers" in n)
    assert not model.region_proposer.training and not any(p.requires_grad for p in model.region_proposer.parameters())


def test_training_region_order_is_random_per_forward_and_repeatable():
    """With `--shuffle_regions` training shows the regions in a new random order every forward (the reference's
    torch.randperm), from the run's seed; without the hook (the default, and evaluation) the order is descending
    score."""
    tok = groma_tokenizer()
    model = GromaForConditionalGeneration(tiny_groma_config(tok))
    boxes = torch.tensor([[[0.2 + 0.08 * i, 0.5, 0.05, 0.05] for i in range(8)]])  # disjoint: NMS keeps all
    scores = torch.linspace(0.9, 0.5, 8)[None]
    no_user = [torch.zeros(0, 4)]
    by_score = model.select_regions(boxes, scores, no_user)[0]
    assert torch.equal(by_score, boxes[0])
    model.region_permutation = models.RandomRegionOrder(seed=0)
    first, second = (model.select_regions(boxes, scores, no_user)[0] for _ in range(2))
    assert not torch.equal(first, by_score) and not torch.equal(first, second)
    assert sorted(first[:, 0].tolist()) == sorted(by_score[:, 0].tolist())  # the same regions, reordered
    model.region_permutation = models.RandomRegionOrder(seed=0)
    assert torch.equal(model.select_regions(boxes, scores, no_user)[0], first)  # the seed repeats the run


def test_phrase_box_f1_hand_case():
    gt = {"phrases": [("a red star", [[0, 0, 10, 10]]), ("a blue ring", [[20, 20, 30, 30]])]}
    parsed = [
        {
            "phrases": [
                ("A red star", torch.tensor([[0.0, 0.0, 10.0, 9.0]])),  # right phrase, IoU 0.9
                ("a blue ring", torch.tensor([[0.0, 0.0, 5.0, 5.0]])),  # wrong box
                ("a green square", torch.tensor([[20.0, 20.0, 30.0, 30.0]])),
            ],
            "boxes": torch.zeros(0, 4),
        }
    ]
    result = evaluation.phrase_box_f1(parsed, [gt])
    assert result["phrase_box_precision@0.5"] == 1 / 3 and result["phrase_box_recall@0.5"] == 0.5
    assert abs(result["phrase_box_f1@0.5"] - 0.4) < 1e-9
    assert evaluation.first_box({"boxes": torch.zeros(0, 4), "phrases": parsed[0]["phrases"]}) == [0.0, 0.0, 10.0, 9.0]
    assert evaluation.first_box({"boxes": torch.zeros(0, 4), "phrases": []}) is None


def test_eval_generate_sorts_by_length_and_keeps_sample_order():
    """The evaluation loop batches prompts sorted by length (longest first) and returns answers in sample order,
    the same as one sample at a time in the given order."""
    tok = groma_tokenizer()
    config = tiny_groma_config(tok)
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(config).eval()
    processor = tiny_groma_processor(tok, config)
    expressions = ["a", "the red star on the left of the big blue square", "two", "the small one near the top"]
    samples = [
        {
            "image": random_image(90 + 7 * i, 112, seed=i),
            "messages": [{"role": "user", "content": f"Locate <p>{e}</p> in the image."}],
            "refer_boxes": [],
        }
        for i, e in enumerate(expressions)
    ]
    prompts = [s["messages"][0]["content"] for s in samples]
    order = evaluation.length_sorted_order(prompts, tok)
    lengths = [len(tok(prompts[i], add_special_tokens=False)["input_ids"]) for i in order]
    assert sorted(order) == [0, 1, 2, 3] and lengths == sorted(lengths, reverse=True) and order[-1] == 0
    sorted_batched = evaluation.generate(model, processor, samples, max_new_tokens=3, batch_size=3)
    one_by_one = evaluation.generate(model, processor, samples, 3, batch_size=1, sort_by_length=False)
    assert len(sorted_batched) == len(samples)
    for a, b in zip(sorted_batched, one_by_one):
        assert a["text"] == b["text"] and torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
        assert torch.allclose(a["regions"], b["regions"], atol=1e-4) and len(a["regions"])


def test_rec_region_bounds_are_the_oracle_and_chance_of_the_regions_shown():
    """The oracle counts a sample when any region shown hits the target; chance is the hit fraction of its regions."""
    target = [10.0, 10.0, 50.0, 50.0]
    hit, near, miss = [10.0, 10.0, 50.0, 52.0], [12.0, 12.0, 50.0, 50.0], [60.0, 60.0, 90.0, 90.0]
    parsed = [
        {"regions": torch.tensor([hit, miss, miss, miss])},  # 1 of 4 regions hits
        {"regions": torch.tensor([near, hit])},  # both hit
        {"regions": torch.tensor([miss])},  # none
        {"regions": torch.zeros(0, 4)},  # nothing shown
    ]
    bounds = evaluation.region_bounds(parsed, [target] * 4)
    assert bounds["oracle"] == pytest.approx(2 / 4)
    assert bounds["chance"] == pytest.approx((1 / 4 + 1.0) / 4)
    assert bounds["regions_shown"] == pytest.approx(7 / 4)


def test_region_caption_eval_reports_caption_scores():
    """Region captions are scored by the one caption path (CIDEr-D without Java, pycocoevalcap's BLEU / ROUGE-L)."""
    tok = groma_tokenizer()
    config = tiny_groma_config(tok)
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(config).eval()
    processor = tiny_groma_processor(tok, config)
    samples = [
        {
            "image": random_image(100, 112, seed=i),
            "messages": [{"role": "user", "content": "What is in <refer>?"}],
            "refer_boxes": [[10.0, 10.0, 60.0, 70.0]],
            "reference": ["a red star", "red star"],
        }
        for i in range(2)
    ]
    scores = evaluation.evaluate_region_captions(model, processor, samples, batch_size=2)
    assert {"region_caption_cider", "region_caption_bleu_4", "region_caption_rouge_l", "region_caption_meteor"} <= set(
        scores
    )
    assert scores["region_caption_cider"] >= 0.0 and "region_caption_cider_whitespace_tokens" not in scores


def test_lora_instruct_trains_adapters_only_and_merges_into_a_plain_groma(tmp_path):
    """--use_lora: LoRA adapters on the LLM's attention (peft) train, the LLM's own weights stay frozen; merging folds
    them in (same outputs) and the saved folder is an ordinary Groma checkpoint."""
    tok = groma_tokenizer()
    config = tiny_groma_config(tok)
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(config)
    models.freeze_for_stage(model, "instruct", train_llm=False)
    models.apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert not any(n.startswith("language_model.") and "lora_" not in n and "embed" not in n and "lm_head" not in n
                   for n in trainable)  # fmt: skip
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter: non-zero B
    model.eval()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        adapted = model.language_model(input_ids=ids).logits
        models.merge_lora(model)
        merged = model.language_model(input_ids=ids).logits
    assert torch.allclose(adapted, merged, atol=1e-4)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    model.save_pretrained(tmp_path)
    reloaded = GromaForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded.language_model(input_ids=ids).logits, merged, atol=1e-5)


def test_mixed_precision_only_where_a_config_asks_for_it():
    """trl's SFTConfig defaults to bf16 even on the CPU (bf16 autocast made the toy det stage ~9x slower there); the
    recipe's arguments default to fp32 and the GPU / paper configs ask for bf16."""
    from groundvlm.recipes.groma import parse

    def bf16(config, *extra):
        return parse(["--config", config, "--stage", "det", "--output_dir", "unused", *extra])[2].bf16

    assert bf16("toy_cpu_det") is False and bf16("toy_cpu_instruct") is False
    assert bf16("toy_gpu_det", "--use_cpu", "true") is True  # use_cpu only so that it parses on this machine
    assert bf16("paper_det", "--use_cpu", "true", "--tf32", "false") is True
