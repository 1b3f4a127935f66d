"""The vision CUDA-graph runner's decisions, checked on the CPU (capture itself needs a GPU: see
benchmarks/groma_graph_check.py): when graphs may be used, what invalidates them, and that the eager path is unchanged."""

import copy

import torch

from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from tests._groma_tiny import tiny_groma_config
from tests.groma.test_groma_model import static_prompt


def covered(model):
    return (model.vision_model, model.multi_modal_projector, model.region_proposer, model.region_encoder)


def test_cpu_runs_eagerly_and_region_encoder_split_equals_forward():
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(tiny_groma_config()).eval()
    assert model.config.vision_cuda_graphs is True
    px = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert model._vision_graphs.run(model._vision_side, px, covered(model)) is None  # CPU: not applicable
        image_embeds, boxes, scores, fused = model.perceive(px)
        eager_embeds, eager_boxes, eager_scores, region_inputs = model.encode_images(px)
        assert torch.equal(image_embeds, eager_embeds) and torch.equal(boxes, eager_boxes)
        assert torch.equal(scores, eager_scores)
        selected = model.select_regions(boxes, scores, [torch.zeros(0, 4)] * 2)
        split = model.region_encoder.extract(fused, selected)
        whole = model.region_encoder(region_inputs, selected)
    assert len(model._vision_graphs) == 0
    assert all(torch.equal(a, b) for a, b in zip(split, whole))


def test_module_state_decides_graph_use():
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(tiny_groma_config()).eval()
    graphs, cpu = model._vision_graphs, torch.device("cpu")
    with torch.no_grad():
        model(input_ids=torch.tensor([static_prompt(model.config)]), pixel_values=torch.randn(1, 3, 112, 112))
    # transformers' own output-capturing hooks (installed by DINOv2's output_hidden_states) do not count
    assert any(m._forward_hooks for m in model.vision_model.modules())
    pointers = graphs._covered_pointers(covered(model), cpu)
    assert pointers is not None and len(pointers) == len(list(model.parameters())) - len(
        list(model.language_model.parameters())
    ) + len(list(model.vision_model.buffers()))
    assert graphs._covered_pointers(covered(model), torch.device("meta")) is None  # weights on another device
    handle = model.region_proposer.decoder_layers[0].register_forward_pre_hook(lambda *args: None)
    assert graphs._covered_pointers(covered(model), cpu) is None  # a user hook would fire only at capture
    handle.remove()
    model.region_encoder.train()
    assert graphs._covered_pointers(covered(model), cpu) is None
    model.eval()
    weight = model.vision_model.encoder.layer[0].mlp.fc1.weight
    weight.data = weight.data.clone()  # new address: the pointers change, so `run` would recapture
    assert graphs._covered_pointers(covered(model), cpu) != pointers


def test_apply_train_and_load_state_dict_reset_the_runner():
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(tiny_groma_config()).eval()
    graphs = model._vision_graphs
    for action in (
        lambda: model.to(torch.float64),
        lambda: model.train(),
        lambda: model.load_state_dict(model.state_dict()),
    ):
        graphs._covered_pointers(covered(model), torch.device("cpu"))
        graphs._graphs[("marker",)] = object()
        action()
        assert graphs._modules is None and len(graphs) == 0
    model.eval()
    assert model.training is False and len(graphs) == 0
    clone = copy.deepcopy(model)  # copies start without graphs
    assert clone._vision_graphs is not graphs and len(clone._vision_graphs) == 0
