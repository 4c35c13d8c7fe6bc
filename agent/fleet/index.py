"""A uniform grid over shape bounding boxes: which shapes can be near a point. Pure.

Each shape's bounding box, grown by ``margin_m``, is entered into every grid cell it overlaps.
``query(lat, lon)`` returns the shapes listed in the point's cell: a superset of the shapes
whose grown box contains the point. So a shape **not** returned is more than ``margin_m``
from the point, which the rule engine relies on: with ``margin_m >= hysteresis_m`` such a
shape is certainly "outside" and need not be measured.

Why a grid and not an R-tree: the shapes are city-sized and roughly evenly spread, a fix needs
one dictionary lookup, and building 1,100 shapes takes a few milliseconds. A shape that would
fill more than ``max_cells_per_item`` cells (a whole-city zone) goes to a short ``always``
list instead of flooding the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agent.fleet.shapes import K_LAT, BBox


class GridIndex:
    """Items are integers (positions in the caller's shape list)."""

    def __init__(
        self,
        boxes: Sequence[BBox],
        *,
        margin_m: float,
        cell_m: float = 250.0,
        max_cells_per_item: int = 4096,
    ) -> None:
        self.margin_m = margin_m
        self.cell_m = cell_m
        ref_lat = sum((b.min_lat + b.max_lat) / 2 for b in boxes) / len(boxes) if boxes else 0.0
        self.cell_lat = cell_m / K_LAT
        self.cell_lon = cell_m / (K_LAT * max(math.cos(math.radians(ref_lat)), 0.05))
        self.always: tuple[int, ...] = ()
        cells: dict[tuple[int, int], list[int]] = {}
        always: list[int] = []
        for item, box in enumerate(boxes):
            g = box.grow_m(margin_m)
            x0, x1 = self._ix(g.min_lon), self._ix(g.max_lon)
            y0, y1 = self._iy(g.min_lat), self._iy(g.max_lat)
            if (x1 - x0 + 1) * (y1 - y0 + 1) > max_cells_per_item:
                always.append(item)
                continue
            for ix in range(x0, x1 + 1):
                for iy in range(y0, y1 + 1):
                    cells.setdefault((ix, iy), []).append(item)
        self.always = tuple(always)
        self._cells: dict[tuple[int, int], tuple[int, ...]] = {
            k: tuple(v) + self.always for k, v in cells.items()
        }

    def _ix(self, lon: float) -> int:
        return math.floor(lon / self.cell_lon)

    def _iy(self, lat: float) -> int:
        return math.floor(lat / self.cell_lat)

    def query(self, lat: float, lon: float) -> tuple[int, ...]:
        """Items that may lie within ``margin_m`` of (lat, lon)."""
        return self._cells.get(
            (math.floor(lon / self.cell_lon), math.floor(lat / self.cell_lat)), self.always
        )

    @property
    def cells(self) -> int:
        return len(self._cells)


class BruteIndex:
    """The baseline: every shape is a candidate (for the benchmark and cross-checks)."""

    def __init__(self, count: int) -> None:
        self._all = tuple(range(count))

    def query(self, lat: float, lon: float) -> tuple[int, ...]:
        return self._all
