"""A grounding demo page: ask Groma to locate an expression or answer with grounded phrases, or ask PIN for an
object, on a toy scene or an uploaded image, and see the boxes drawn with their phrases.

    python recipes/demo.py                                   # untrained defaults (see below), http://127.0.0.1:7860
    python recipes/demo.py --groma runs/groma/toy_cpu/instruct/final --pin runs/pin/default/pin/final --port 8080

Defaults (nothing given): Groma is a tiny random model built in memory and PIN is an untrained insert on the
committed toy caption VLM (`recipes/toy_checkpoints/vlm-caption`); both run end to end but their boxes mean nothing,
and the page says so. `--groma` / `--pin` take any local checkpoint folder (`save_pretrained` output with its
processor). The page is served on localhost only; Gradio's analytics are off and no share link is made.
Logic: `groundvlm.recipes.systems.demo`.
"""

from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groma", metavar="PATH", help="a Groma checkpoint folder (default: untrained tiny Groma)")
    parser.add_argument("--pin", metavar="PATH", help="a saved PIN folder (default: untrained insert on the toy VLM)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--scenes", type=int, default=4, help="toy scenes offered (default 4, seed 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from groundvlm.recipes.systems.demo.app import build_demo, launch
    from groundvlm.recipes.systems.demo.models import load_groma, load_pin
    from groundvlm.recipes.systems.demo.scenes import toy_scenes

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    systems = {"groma": load_groma(args.groma, device), "pin": load_pin(args.pin, device)}
    for name, system in systems.items():
        print(f"{name}: {system.description}")
    launch(build_demo(systems, toy_scenes(args.scenes)), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
