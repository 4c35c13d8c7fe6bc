"""Route coverage: the share of a route driven with the work equipment on, per shift. Pure.

A route is cut into pieces of ``piece_m`` metres along its centre line (the last one may be
shorter). A fix *covers* when it lies within the route's corridor and the route's equipment
(or, when the route names none, any of brush / pump / lift) is on. Its position along the
route is the foot of the perpendicular to the nearest segment. Two consecutive covering fixes
at most ``max_gap_m`` apart along the route (and ``max_gap_s`` apart in time) cover every piece
between them; a lone covering fix covers its own piece. So at 1 Hz and 30 km/h (8 m between
fixes) a 10 m piece is never skipped, and a GPS jump or a gap in reception does not paint
a stretch the truck may not have driven.

``share = covered length / route length``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CoverageReport:
    route: str
    shift: str
    length_m: float
    covered_m: float
    pieces: int
    covered_pieces: int

    @property
    def share(self) -> float:
        return self.covered_m / self.length_m if self.length_m > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "route": self.route,
            "shift": self.shift,
            "length_m": round(self.length_m, 1),
            "covered_m": round(self.covered_m, 1),
            "share": round(self.share, 4),
            "pieces": self.pieces,
            "covered_pieces": self.covered_pieces,
        }


class RouteCoverage:
    """Coverage of one route during one shift."""

    def __init__(
        self,
        route: str,
        shift: str,
        length_m: float,
        *,
        piece_m: float = 10.0,
        max_gap_m: float = 60.0,
        max_gap_s: float = 30.0,
    ) -> None:
        self.route = route
        self.shift = shift
        self.length_m = length_m
        self.piece_m = piece_m
        self.max_gap_m = max_gap_m
        self.max_gap_s = max_gap_s
        # a remainder under 1 % of a piece (rounding of the coordinates) joins the last piece
        self.pieces = max(1, math.ceil(length_m / piece_m - 0.01))
        self.covered = bytearray(self.pieces)
        self._last: tuple[float, float] | None = None  # (s along route, time) of the last cover

    def _piece(self, s: float) -> int:
        return min(self.pieces - 1, max(0, int(s // self.piece_m)))

    def observe(self, s: float, t: float, covering: bool) -> None:
        """One fix on this route: ``s`` metres along it, ``covering`` as defined above."""
        if not covering:
            self._last = None
            return
        i = self._piece(s)
        last = self._last
        if (
            last is not None
            and abs(s - last[0]) <= self.max_gap_m
            and 0 < t - last[1] <= self.max_gap_s
        ):
            j = self._piece(last[0])
            lo, hi = (i, j) if i <= j else (j, i)
            for k in range(lo, hi + 1):
                self.covered[k] = 1
        else:
            self.covered[i] = 1
        self._last = (s, t)

    def gap(self) -> None:
        """The fix stream broke (not on the route any more): the next fix starts afresh."""
        self._last = None

    def report(self) -> CoverageReport:
        n = sum(self.covered)
        last_len = self.length_m - (self.pieces - 1) * self.piece_m
        covered_m = (n - self.covered[-1]) * self.piece_m + (last_len if self.covered[-1] else 0)
        return CoverageReport(
            self.route,
            self.shift,
            self.length_m,
            min(covered_m, self.length_m),
            self.pieces,
            n,
        )
