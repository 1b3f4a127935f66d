"""The grounding demo page (`recipes/demo.py`): toy scenes to pick, Groma and PIN behind one processing function,
boxes drawn with their phrases, and the Gradio page around them.

scenes.py      deterministic toy-world scenes offered as examples
models.py      the two systems: a local checkpoint, or an untrained default (tiny random Groma, untrained PIN insert)
grounding.py   one question in, phrases with pixel boxes out (importable and testable without a browser)
drawing.py     boxes and phrases drawn on a copy of the image
app.py         the `gr.Blocks` page and its launch
"""
