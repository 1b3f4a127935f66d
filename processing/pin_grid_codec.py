"""PIN's box-as-text codec: boxes on a `grid_size`² grid over the squashed image, written as tick labels.

Reproduces the reference `GridCodec` (QUVA-Lab/PIN `utils/grid_codec.py`):
- tick labels `range_max_value · i / grid_size` for i = 0..grid_size, written as an int when whole, else with one
  decimal when that is exact, else two decimals (224 px: "0", "14", ..., "224"; 112 px: "0", "7", ..., "112");
- a box covering the inclusive cells `[gx1, gy1, gx2, gy2]` is written `"[t(gx1),t(gy1),t(gx2+1),t(gy2+1)]"`;
- decoding needs `' [x1,y1,x2,y2]'` (a space before '['), x1/y1 among the first grid_size labels, x2/y2 among the
  last grid_size labels, x1 < x2 and y1 < y2; anything else falls back to cell [0, 0, 0, 0], flagged.
"""

import math
import re

# The reference's pattern, verbatim: the space before '[' is required.
BOX_PATTERN = re.compile(r" \[(.+?),(.+?),(.+?),(.+?)\]")

# The reference's grid: 16 x 16 cells over the 224 px image (QUVA-Lab/PIN `utils/grid_codec.py`, grid_size=16).
GRID_SIZE = 16


class PinGridCodec:
    """Encode boxes to / decode boxes from PIN's text format.

    Args:
        grid_size: cells per side (`GRID_SIZE`, 16, in the paper).
        image_size: side S of the squashed image the boxes live on (224 in the paper; 112 in the toy world).
        range_max_value: value of the last tick (default: `image_size`, i.e. pixel ticks; the reference's
            ablation uses 1 for normalised ticks).
    """

    def __init__(self, grid_size: int = GRID_SIZE, image_size: int = 224, range_max_value: float | None = None):
        if grid_size < 1 or image_size < 1:
            raise ValueError(f"PinGridCodec needs positive grid_size and image_size, got {grid_size}, {image_size}")
        self.grid_size = grid_size
        self.image_size = image_size
        self.range_max_value = image_size if range_max_value is None else range_max_value
        self.ticks = [self._format_tick(self.range_max_value * i / grid_size) for i in range(grid_size + 1)]
        self._tick_index = {tick: i for i, tick in enumerate(self.ticks)}
        # The reference converts decoded cells to pixels with a cell width of ceil(S / grid) and clips at S.
        self._decode_cell = math.ceil(image_size / grid_size)

    @staticmethod
    def _format_tick(value: float) -> str:
        if value == int(value):
            return str(int(value))
        if int(value * 10) == value * 10:
            return f"{value:.1f}"
        return f"{value:.2f}"

    def box_to_cells(self, box: list[float] | tuple[float, ...]) -> list[int]:
        """Grid cells `[gx1, gy1, gx2, gy2]` (inclusive) covering a pixel box `[x1, y1, x2, y2]` on the S×S image.

        Grid-aligned boxes (what the composition function produces) map exactly; other boxes are widened to the
        cells they touch.
        """
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (0 <= x1 < x2 <= self.image_size and 0 <= y1 < y2 <= self.image_size):
            raise ValueError(
                f"box {list(box)} must satisfy 0 <= x1 < x2 <= {self.image_size} and 0 <= y1 < y2 <= {self.image_size}"
            )
        cell = self.image_size / self.grid_size
        eps = 1e-6  # so that coordinates on a grid line are not pushed into the neighbouring cell by rounding

        def first(v):
            return min(self.grid_size - 1, int(math.floor(v / cell + eps)))

        def last(v):
            return max(0, int(math.ceil(v / cell - eps)) - 1)

        return [first(x1), first(y1), max(first(x1), last(x2)), max(first(y1), last(y2))]

    def encode_cells(self, cells: list[int] | tuple[int, ...]) -> str:
        """`"[x1,y1,x2,y2]"` for inclusive grid cells `[gx1, gy1, gx2, gy2]` (the reference's `encode`)."""
        gx1, gy1, gx2, gy2 = (int(c) for c in cells)
        if not (0 <= gx1 <= gx2 < self.grid_size and 0 <= gy1 <= gy2 < self.grid_size):
            raise ValueError(f"grid cells {list(cells)} must satisfy 0 <= g1 <= g2 < {self.grid_size} on both axes")
        return f"[{self.ticks[gx1]},{self.ticks[gy1]},{self.ticks[gx2 + 1]},{self.ticks[gy2 + 1]}]"

    def encode(self, box: list[float] | tuple[float, ...]) -> str:
        """`"[x1,y1,x2,y2]"` for a pixel box on the S×S image."""
        return self.encode_cells(self.box_to_cells(box))

    def cells_to_box(self, cells: list[int] | tuple[int, ...]) -> list[float]:
        """Pixel box on the S×S image for inclusive cells, as the reference decodes (x2, y2 clipped at S)."""
        gx1, gy1, gx2, gy2 = cells
        c, s = self._decode_cell, self.image_size
        return [float(gx1 * c), float(gy1 * c), float(min((gx2 + 1) * c, s)), float(min((gy2 + 1) * c, s))]

    def max_tokens(self, tokenizer) -> int:
        """Tokens `tokenizer` spends on the longest box answer `' [x1,y1,x2,y2]'` of this grid: what generation must
        leave room for. The reference's 12 new tokens hold a box of OPT/MPT, whose numbers are single tokens; a
        tokenizer that splits digits (LLaMA's) needs more: 17 on the toy world's 112-px grid."""

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False).input_ids)

        x1, x2 = max(self.ticks[:-1], key=count), max(self.ticks[1:], key=count)
        return count(" [" + ",".join((x1, x1, x2, x2)) + "]")

    def decode(self, text: str) -> tuple[list[float], bool, str]:
        """Parse the first `' [x1,y1,x2,y2]'` in `text`.

        Returns:
            `(box, parsed, reason)`: the pixel box on the S×S image; `parsed` False means the reference's fallback
            cell [0, 0, 0, 0] was used, and `reason` says why (empty when parsed).
        """
        match = BOX_PATTERN.search(text)
        if match is None:
            return self.cells_to_box([0, 0, 0, 0]), False, "no ' [x1,y1,x2,y2]' box in the text"
        x1, y1, x2, y2 = match.groups()
        starts, ends = self.ticks[:-1], self.ticks[1:]
        for name, value, allowed in (("x1", x1, starts), ("y1", y1, starts), ("x2", x2, ends), ("y2", y2, ends)):
            if value not in allowed:
                return self.cells_to_box([0, 0, 0, 0]), False, f"{name}={value!r} is not a tick label of the grid"
        ix1, iy1, ix2, iy2 = (self._tick_index[v] for v in (x1, y1, x2, y2))
        if ix1 >= ix2 or iy1 >= iy2:
            return self.cells_to_box([0, 0, 0, 0]), False, f"degenerate box [{x1},{y1},{x2},{y2}] (needs x1<x2, y1<y2)"
        return self.cells_to_box([ix1, iy1, ix2 - 1, iy2 - 1]), True, ""
