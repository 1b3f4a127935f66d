"""The demo page (`gr.Blocks`): pick a toy scene or upload an image, choose Groma (locate / grounded answer) or PIN,
type the question, and see the boxes drawn with their phrases next to the `{phrase, box}` list."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reporting or version check over the network

import gradio as gr  # noqa: E402

from groundvlm.recipes.systems.demo.grounding import TASKS, ground  # noqa: E402
from groundvlm.recipes.systems.demo.models import DemoSystem  # noqa: E402
from groundvlm.recipes.systems.demo.scenes import DemoScene  # noqa: E402

HINTS = {
    "Groma: locate (REC)": "a referring expression, e.g. 'the orange cross'",
    "Groma: grounded answer": "a question (grounded: phrases come with boxes); empty = describe the image",
    "PIN: find an object": "an object name, e.g. 'orange cross'",
}
MAX_PROPOSALS = 20


def theme() -> gr.themes.Base:
    """Gradio's default theme with system fonts: the default one loads its fonts from a web font service."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


def _systems_markdown(systems: dict[str, DemoSystem]) -> str:
    lines = []
    for name, system in systems.items():
        label = "Groma" if name == "groma" else "PIN"
        text = system.description if system.trained else f"**{system.description}**"
        lines.append(f"- {label}: {text}")
    return "\n".join(lines)


def build_demo(systems: dict[str, DemoSystem], scenes: list[DemoScene]) -> gr.Blocks:
    """The page. `systems` maps "groma" / "pin" to loaded systems; `scenes` are the pickable toy images."""
    by_label = {scene.label: scene for scene in scenes}
    first_task = next(iter(TASKS))

    def pick_scene(label):
        return by_label[label].image if label in by_label else None

    def run(image, text, task, proposals):
        try:
            result = ground(systems, image, text, task, proposals)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        notes = "\n".join(f"- {note}" for note in result.notes)
        return result.image, result.boxes, result.answer, notes

    with gr.Blocks(title="groundvlm grounding demo", analytics_enabled=False) as demo:
        gr.Markdown("# groundvlm grounding demo\nBoxes from Groma or PIN, drawn with their phrases.")
        gr.Markdown(_systems_markdown(systems), elem_id="systems")
        with gr.Row():
            with gr.Column():
                scene = gr.Radio(
                    [s.label for s in scenes], value=scenes[0].label if scenes else None, label="Toy scene",
                    elem_id="scene",
                )  # fmt: skip
                image = gr.Image(
                    value=scenes[0].image if scenes else None, type="pil", sources=["upload", "clipboard"],
                    label="Image (pick a scene above or upload)", format="png", elem_id="input-image",
                )  # fmt: skip
                task = gr.Radio(list(TASKS), value=first_task, label="Task", elem_id="task")
                question = gr.Textbox(label="Question", info=HINTS[first_task], elem_id="question")
                proposals = gr.Slider(
                    0, MAX_PROPOSALS, value=0, step=1, label="Also draw this many Groma region proposals <rK>",
                    elem_id="proposals",
                )  # fmt: skip
                submit = gr.Button("Ground", variant="primary", elem_id="submit")
            with gr.Column():
                output_image = gr.Image(label="Boxes", format="png", interactive=False, elem_id="output-image")
                boxes = gr.JSON(label="Boxes (JSON: phrase, box = pixel x1, y1, x2, y2)", elem_id="boxes-json")
                answer = gr.Textbox(label="Raw answer", interactive=False, elem_id="answer")
                notes = gr.Markdown(elem_id="notes")
        scene.change(pick_scene, scene, image)
        task.change(lambda t: gr.update(info=HINTS.get(t, "")), task, question)
        inputs, outputs = [image, question, task, proposals], [output_image, boxes, answer, notes]
        submit.click(run, inputs, outputs)
        question.submit(run, inputs, outputs)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the page on `host:port` (never a public share link); `block=False` returns once it is up."""
    return demo.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
        show_error=True, ssr_mode=False, theme=theme(), quiet=not block,
    )  # fmt: skip
