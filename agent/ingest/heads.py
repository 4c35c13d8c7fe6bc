"""The platform's record of each device's signed stream heads (see agent.uplink.heads).

``<store>/<device>/heads.json`` keeps, per stream, the highest head the device has shown
(``seq``, manifest ``hash``, ``pending``, when it was first and last seen). A head beyond what
the store holds is normal while the device is still delivering; it is reported as **missing**
once delivery has settled for that stream:

- the device says nothing of the stream is pending any more (every segment was acknowledged
  or evicted), yet the store lacks the head segment: it was deleted on the device without the
  platform having it (a forged acknowledgement, or an eviction the evidence must explain); or
- the head has been known for ``settle_s`` (default 6 h) and has still not arrived.

A stored head segment whose manifest hash is not the signed one is a **fork**. Each finding is
logged once (ERROR) and kept in ``heads.json`` under ``"missing"``; ``edge-agent heads --store
DIR`` prints them for every device.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import boundedjson, ids
from agent.errors import AgentError
from agent.ingest.store import Store
from agent.storage.durable import write_atomic
from agent.uplink.heads import Heads, parse_heads

log = logging.getLogger(__name__)

HEADS_FILE = "heads.json"
SETTLE_S = 6 * 3600.0


@dataclass(frozen=True)
class Finding:
    device: str
    stream: str
    seq: int
    hash: str
    stored_max: int | None  # the highest seq the store holds for the stream
    why: str  # "missing" | "fork"
    settled: str  # why delivery counts as settled

    def text(self) -> str:
        held = "nothing" if self.stored_max is None else f"up to #{self.stored_max}"
        if self.why == "fork":
            return (
                f"{self.device}/{self.stream}#{self.seq}: the stored segment is not the one the "
                f"device signed as its head ({self.hash[:16]}): a fork"
            )
        return (
            f"{self.device}/{self.stream}: the device's signed head is #{self.seq} "
            f"({self.hash[:16]}), the store holds {held}, and {self.settled}: "
            "segments the device sealed are missing"
        )


class HeadsBook:
    """Verifies heads messages against the store's device keys, records, reports."""

    def __init__(
        self, store: Store, *, settle_s: float = SETTLE_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settle_s = settle_s
        self._clock = clock
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str, int, str]] = set()
        self.recorded = 0
        self.refused = 0

    def path(self, device: str) -> Path:
        return ids.contained(self.store.root, ids.check_device_id(device), HEADS_FILE)

    def load(self, device: str) -> dict[str, Any]:
        try:
            data = self.path(device).read_bytes()
        except FileNotFoundError:
            return {"streams": {}}
        try:
            obj: dict[str, Any] = boundedjson.loads(data, str(self.path(device)), max_depth=6)
        except AgentError as exc:
            log.error("ingest: %s; starting it again", exc)
            return {"streams": {}}
        if not isinstance(obj.get("streams"), dict):
            obj["streams"] = {}
        return obj

    def record(self, device: str, payload: bytes) -> list[Finding]:
        """Check and record one heads message; returns what it revealed (logged once each).

        Raises AgentError for a malformed, unsigned or forged message (nothing recorded).
        """
        heads = parse_heads(payload, device, self.store.pinned(device))
        with self._lock:
            book = self.load(device)
            self._merge(book, heads)
            self._save(device, book)
            self.recorded += 1
            return self._check(device, book)

    def _merge(self, book: dict[str, Any], heads: Heads) -> None:
        now = round(self._clock(), 3)
        streams: dict[str, Any] = book["streams"]
        for name, head in heads.streams.items():
            old = streams.get(name)
            if not isinstance(old, dict) or not isinstance(old.get("seq"), int):
                old = None
            if old is None or head.seq > old["seq"]:
                streams[name] = {
                    "seq": head.seq,
                    "hash": head.hash,
                    "pending": head.pending,
                    "at": heads.at,
                    "boot": heads.boot,
                    "first_seen": now,
                    "last_seen": now,
                }
            elif head.seq == old["seq"]:
                if head.hash != old.get("hash"):
                    log.error(
                        "ingest: %s/%s#%d: the device signed two different heads (%s, %s)",
                        heads.device,
                        name,
                        head.seq,
                        str(old.get("hash"))[:16],
                        head.hash[:16],
                    )
                    continue
                if heads.at >= int(old.get("at", 0)):
                    old.update(pending=head.pending, at=heads.at, boot=heads.boot)
                old["last_seen"] = now
        book["signer"] = heads.signer
        book["received"] = now

    def _save(self, device: str, book: dict[str, Any]) -> None:
        path = self.path(device)
        self.store.mkdirs(path.parent)
        write_atomic(path, json.dumps(book, sort_keys=True, indent=1).encode(), self.store.tmp)

    def _stored_max(self, device: str, stream: str) -> int | None:
        seqs = [int(p.stem) for p in self.store.segments(device, stream) if p.stem.isdigit()]
        return max(seqs) if seqs else None

    def _check(self, device: str, book: dict[str, Any]) -> list[Finding]:
        now = self._clock()
        found: list[Finding] = []
        missing: dict[str, Any] = {}
        for stream, head in sorted(book["streams"].items()):
            try:
                seq = ids.check_seq(head.get("seq"))
                mhash = ids.check_hash(head.get("hash"))
                ids.check_stream(stream)
            except AgentError:
                continue
            path = self.store.seg_path(device, stream, seq)
            if path.exists():
                stored = self.store.stored_hash(path)
                if stored is not None and stored != mhash:
                    found.append(Finding(device, stream, seq, mhash, seq, "fork", "stored"))
                continue
            pending = head.get("pending")
            if pending == 0:
                settled = "the device reports nothing of it pending"
            elif now - float(head.get("first_seen", now)) >= self.settle_s:
                settled = f"it has not arrived in {self.settle_s:.0f} s"
            else:
                continue
            f = Finding(device, stream, seq, mhash, self._stored_max(device, stream), "missing",
                        settled)  # fmt: skip
            found.append(f)
            missing[stream] = {"seq": seq, "hash": mhash, "stored_max": f.stored_max}
        if missing != book.get("missing", {}):
            book["missing"] = missing
            self._save(device, book)
        for f in found:
            key = (f.device, f.stream, f.seq, f.why)
            if key not in self._reported:
                self._reported.add(key)
                log.error("ingest: %s", f.text())
        return found

    def check(self, device: str) -> list[Finding]:
        """Findings for one device from what is recorded (no new message)."""
        with self._lock:
            return self._check(device, self.load(device))

    def check_all(self) -> list[Finding]:
        out: list[Finding] = []
        for d in sorted(self.store.root.iterdir()):
            if ids.device_id_problem(d.name) is None and (d / HEADS_FILE).exists():
                out += self.check(d.name)
        return out
