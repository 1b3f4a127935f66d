"""Toy scenes offered on the demo page: a few `ToyWorld` scenes, deterministic from a seed."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from groundvlm.recipes.toyworld import ToyWorld
from groundvlm.recipes.toyworld.texts import describe

SCENE_SEED = 0
SCENE_SIZE = 224  # 16 grid cells of 14 px, PIN's grid; every system resizes to its own input size


@dataclass(frozen=True)
class DemoScene:
    """One pickable image: a label naming its objects, the image, and the objects' names and pixel boxes."""

    label: str
    image: Image.Image
    objects: tuple[tuple[str, tuple[int, int, int, int]], ...]


def toy_scenes(count: int = 4, seed: int = SCENE_SEED, image_size: int = SCENE_SIZE) -> list[DemoScene]:
    """`count` scenes of every toy category (split "all"), scene i = `ToyWorld(seed, split="all").scene(i)`."""
    world = ToyWorld(seed=seed, image_size=image_size, split="all", num_objects=(1, 3))
    scenes = []
    for index in range(count):
        scene = world.scene(index)
        objects = tuple((describe(obj), tuple(int(v) for v in obj.box)) for obj in scene.objects)
        label = f"scene {index}: " + ", ".join(name for name, _ in objects)
        scenes.append(DemoScene(label=label, image=scene.image, objects=objects))
    return scenes
