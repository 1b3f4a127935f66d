"""Draw `{phrase, box}` entries on a copy of an image (PIL only)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

# Distinct outline colours, cycled per entry (matplotlib's tab10).
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def draw_boxes(image: Image.Image, entries: list[dict], width: int | None = None) -> Image.Image:
    """A copy of `image` (RGB) with each entry's `box` (pixel xyxy) outlined and its `phrase` written above it.

    Small images are upscaled first (to a 448 px long side, nearest neighbour) so the labels stay readable; boxes
    are scaled with the image."""
    image = image.convert("RGB")
    scale = max(1.0, 448 / max(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    else:
        image = image.copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    line = width or max(2, round(max(image.size) / 150))
    for i, entry in enumerate(entries):
        colour = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = (v * scale for v in entry["box"])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        text = entry["phrase"]
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx, ty = x1, max(0.0, y1 - (bottom - top) - 4)
        draw.rectangle((tx, ty, tx + right - left + 4, ty + bottom - top + 4), fill=colour)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=(255, 255, 255), font=font)
    return image
