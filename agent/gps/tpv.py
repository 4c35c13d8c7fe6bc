"""gpsd JSON (TPV/SKY reports) to Fixes: shared by the gpsd source and the JSON-log replay.

gpsd reports a TPV after many sentences of a cycle, several per epoch; :class:`TpvAssembler`
keeps the last report of each epoch and emits it when the next epoch's first report arrives
(or on :meth:`TpvAssembler.flush`), so both paths give one Fix per epoch, like the NMEA reader.

Altitude: gpsd >= 3.20 reports ``altMSL`` and ``altHAE`` (``alt`` is deprecated and absent
from some builds); gpsd-py3 reads only ``alt``. We read ``altMSL`` first, then ``alt``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from agent.model import Fix, FixMode


def parse_time(value: object) -> float | None:
    """gpsd's ISO 8601 ``2018-08-20T09:48:55.000Z`` to UTC seconds (None if malformed)."""
    if not isinstance(value, str) or not value.endswith("Z"):
        return None
    try:
        dt = datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        return None
    return dt.timestamp()


def _num(tpv: dict[str, Any], *names: str) -> float | None:
    for name in names:
        v = tpv.get(name)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


class TpvAssembler:
    """Turns a stream of gpsd JSON objects into one Fix per epoch."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._pending: Fix | None = None
        self._hdop: float | None = None
        self._used: int | None = None
        self._visible: int | None = None
        self._last_time: float | None = None

    def feed_line(self, line: str | bytes) -> list[Fix]:
        """One line of gpsd output (anything that is not a JSON object is ignored)."""
        line = line.strip()
        if not line or line[:1] not in ("{", b"{"):
            return []
        try:
            obj = json.loads(line)
        except ValueError:
            return []
        return self.feed_object(obj) if isinstance(obj, dict) else []

    def feed_object(self, obj: dict[str, Any]) -> list[Fix]:
        cls = obj.get("class")
        if cls == "SKY":
            hdop = _num(obj, "hdop")
            if hdop is not None:
                self._hdop = hdop
            used, seen = obj.get("uSat"), obj.get("nSat")
            if isinstance(used, int):
                self._used = used
            if isinstance(seen, int):
                self._visible = seen
            return []
        if cls != "TPV":
            return []
        t = parse_time(obj.get("time"))
        if t is None:
            return []  # gpsd has no date yet: never report a guessed one
        mode_raw = obj.get("mode")
        mode = FixMode(mode_raw) if mode_raw in (2, 3) else FixMode.NO_FIX
        lat, lon = _num(obj, "lat"), _num(obj, "lon")
        if mode >= FixMode.FIX_2D and (lat is None or lon is None):
            mode = FixMode.NO_FIX
        has_pos = mode >= FixMode.FIX_2D
        status = obj.get("status")
        fix = Fix(
            time=round(t, 3),
            mode=mode,
            lat=lat if has_pos else None,
            lon=lon if has_pos else None,
            alt=_num(obj, "altMSL", "alt") if mode == FixMode.FIX_3D else None,
            speed=_num(obj, "speed") if has_pos else None,
            track=_num(obj, "track") if has_pos else None,
            quality=status if isinstance(status, int) and not isinstance(status, bool) else None,
            sats_used=self._used,
            sats_visible=self._visible,
            hdop=self._hdop,
            source=self.source,
        )
        out: list[Fix] = []
        if self._pending is not None and self._pending.time != fix.time:
            out.append(self._pending)
        self._pending = fix
        return out

    def flush(self) -> list[Fix]:
        out = [self._pending] if self._pending is not None else []
        self._pending = None
        return out
