"""One question in, phrases with pixel boxes out: the demo's processing function, without any UI.

Groma (paper §3.3; prompts of FoundationVision/groma groma/data/datasets/refcoco_rec.py and flickr.py, as the
training recipe's `recipes/systems/groma/data.py`):
    locate     "Locate <p>{expression}</p> in the image."   -> `<roi><rK></roi>`: the expression's box
    grounded   "[grounding]{question}" (empty: the grounded-caption instruction) -> `<p>phrase</p><roi><rK>..</roi>`
PIN (paper §3.2): "In the image is a(n) {object} located at" -> " [x1,y1,x2,y2]" on the grid, one box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from groundvlm.processing.processing_groma import build_groma_prompt
from groundvlm.recipes.systems.demo.drawing import draw_boxes
from groundvlm.recipes.systems.demo.models import DemoSystem
from groundvlm.recipes.systems.groma.data import GROUNDED_CAPTION_INSTRUCTION, REC_EVAL_INSTRUCTION
from groundvlm.recipes.systems.groma.evaluation import MAX_NEW_TOKENS
from groundvlm.recipes.systems.pin.evaluation import check_max_new_tokens

# The page's task choices: (label, system, Groma mode).
TASKS = {
    "Groma: locate (REC)": ("groma", "locate"),
    "Groma: grounded answer": ("groma", "grounded"),
    "PIN: find an object": ("pin", None),
}


@dataclass
class GroundingResult:
    """What the page shows: the image with boxes, the `{phrase, box}` list, the raw answer and notes."""

    image: Image.Image
    boxes: list[dict]
    answer: str
    notes: list[str] = field(default_factory=list)


def _box(values) -> list[float]:
    return [round(float(v), 1) for v in values]


@torch.no_grad()
def ask_groma(system: DemoSystem, image: Image.Image, text: str, mode: str = "locate", proposals: int = 0):
    """Groma's answer to `text` on `image`: (`{phrase, box, source}` entries, raw answer, notes).

    locate: `text` is a referring expression; boxes outside `<p>` phrases are the expression's. grounded: `text` is
    a question (empty: the grounded-caption instruction). `proposals` > 0 also lists the first that many region
    proposals (`<rK>`, the boxes the answer can refer to), marked `source: "proposal"`."""
    text = " ".join(text.split())
    if mode == "locate":
        if not text:
            raise ValueError("type a referring expression to locate, e.g. 'the red star on the left'")
        prompt, max_new_tokens = REC_EVAL_INSTRUCTION.format(f"<p>{text}</p>"), 2 * MAX_NEW_TOKENS["rec"]
    elif mode == "grounded":
        query = "[grounding]" + text if text else GROUNDED_CAPTION_INSTRUCTION
        prompt, max_new_tokens = query, MAX_NEW_TOKENS["grounded_caption"]
    else:
        raise ValueError(f"Groma mode must be 'locate' or 'grounded', got {mode!r}")
    processor, model = system.processor, system.model
    inputs = processor(images=[image], text=[build_groma_prompt(prompt)])
    sizes = inputs.pop("image_sizes")
    inputs = {k: v.to(system.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True)
    answer_ids = out.sequences[:, inputs["input_ids"].shape[1] :]
    regions = out.region_boxes[0].cpu()
    parsed = processor.post_process_grounding(answer_ids, [regions], sizes, skip_prompt=False)[0]
    raw = processor.tokenizer.decode(answer_ids[0], skip_special_tokens=False)
    raw = raw.replace(processor.tokenizer.pad_token or "[PAD]", "").strip()

    entries = [
        {"phrase": phrase, "box": _box(box), "source": "answer"} for phrase, boxes in parsed["phrases"] for box in boxes
    ]
    free_phrase = text if mode == "locate" else "region"
    entries += [{"phrase": free_phrase, "box": _box(box), "source": "answer"} for box in parsed["boxes"]]
    notes = [] if parsed["parsed"] else [f"answer not parsed: {parsed['reason']}"]
    if parsed["parsed"] and parsed["reason"]:
        notes.append(parsed["reason"])
    if not entries:
        notes.append(f"the answer refers to no region ({len(regions)} regions were proposed)")
    height, width = (float(v) for v in sizes[0])
    scale = torch.tensor([width, height, width, height])
    entries += [
        {"phrase": f"<r{j}>", "box": _box(box * scale), "source": "proposal"}
        for j, box in enumerate(regions[: max(0, int(proposals))])
    ]
    return entries, raw, notes


@torch.no_grad()
def ask_pin(system: DemoSystem, image: Image.Image, name: str):
    """PIN's box for the object `name` on `image`: (one `{phrase, box, source, parsed}` entry, generated text, notes).

    An unparsable answer gives the reference's fallback box (grid cell [0,0,0,0]), marked `parsed: false`."""
    name = " ".join(name.split())
    if not name:
        raise ValueError("type an object name for PIN, e.g. 'red star'")
    processor, model = system.processor, system.model
    inputs = processor(images=[image], objects=[name], padding_side="left")
    inputs = {k: v.to(system.device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    budget = check_max_new_tokens(processor, None)  # as the recipe's evaluation
    generated = model.generate(**inputs, max_new_tokens=budget, do_sample=False, num_beams=1)
    result = processor.post_process_localization(generated.cpu(), [(image.height, image.width)], labels=[name])[0]
    entry = {"phrase": name, "box": _box(result["boxes"][0]), "source": "answer", "parsed": bool(result["parsed"])}
    notes = [] if result["parsed"] else [f"no box in the answer ({result['reason']}): the fallback box is shown"]
    return [entry], result["text"], notes


def ground(systems: dict[str, DemoSystem], image, text: str, task: str, proposals: int = 0) -> GroundingResult:
    """Run `task` (a key of `TASKS`) on `image` (PIL or an HxWx3 uint8 array) with `text`; draw the boxes.

    `systems` maps "groma" / "pin" to a loaded `DemoSystem`. Raises ValueError on missing input (no image, empty
    text, unknown task); the page shows it as an error."""
    if image is None:
        raise ValueError("pick a toy scene or upload an image first")
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    image = (image if isinstance(image, Image.Image) else Image.fromarray(image)).convert("RGB")
    name, mode = TASKS[task]
    system = systems[name]
    if name == "groma":
        boxes, answer, notes = ask_groma(system, image, text or "", mode, proposals)
    else:
        boxes, answer, notes = ask_pin(system, image, text or "")
    if not system.trained:
        notes.insert(0, system.description)
    return GroundingResult(draw_boxes(image, boxes), boxes, answer, notes)
