"""Recovery at the spool's open: a consistent state after any stop, clean or not.

Temp files are removed; segments that were in flight go back to ready (older versions kept
that state in the index); acknowledged segments whose file removal was cut short are removed;
a key record or a sealed segment that was renamed into place but not yet indexed (a cut
between the two) is adopted; anything else that does not parse, or does not match the index or
its chain, is moved to quarantine with a log line (never deleted by the agent). An indexed
segment whose file is missing is counted as lost. Quarantined or lost files are recorded as a
``spool_recovery`` event.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import wallclock
from agent.errors import FormatError
from agent.storage.durable import fsync_dir
from agent.storage.retention import Retention
from agent.storage.seal import parse_key_record, read_segment_info
from agent.storage.spoolindex import ACKED, INFLIGHT, READY, SpoolIndex

log = logging.getLogger(__name__)


def quarantine(root: Path, path: Path, why: str) -> None:
    dest = root / "quarantine" / f"{int(wallclock.now())}-{uuid.uuid4().hex[:8]}-{path.name}"
    log.error("spool: moving %s to quarantine: %s", path, why)
    os.replace(path, dest)
    fsync_dir(dest.parent)


def recover(
    index: SpoolIndex, record_event: Callable[[str, dict[str, Any]], None]
) -> dict[str, int]:
    """Bring the spool to a consistent state after any stop, clean or not."""
    root = index.root
    stats = {"tmp_removed": 0, "inflight_reset": 0, "adopted": 0, "quarantined": 0, "lost": 0}
    for tmp in (root / "tmp").iterdir():
        tmp.unlink()
        stats["tmp_removed"] += 1
    if stats["tmp_removed"]:
        log.info("spool: removed %d unfinished temp files", stats["tmp_removed"])
        fsync_dir(root / "tmp")
    with index.tx() as db:
        cur = db.execute("UPDATE segments SET state=? WHERE state=?", (READY, INFLIGHT))
        stats["inflight_reset"] = cur.rowcount
        # Acknowledged segments whose file removal was cut short.
        for sid, stream, seq in db.execute(
            "SELECT id, stream, seq FROM segments WHERE state=?", (ACKED,)
        ).fetchall():
            index.seg_path(stream, seq).unlink(missing_ok=True)
            db.execute("DELETE FROM segments WHERE id=?", (sid,))
        for stream, next_seq, last_hash in db.execute("SELECT * FROM chains"):
            index.chains[stream] = (next_seq, last_hash)
        index.stored_keys = {k for (k,) in db.execute("SELECT key_id FROM keys")}
    indexed: dict[tuple[str, int], tuple[int, str]] = {
        (s, q): (i, h)
        for i, s, q, h in index.db.execute("SELECT id, stream, seq, manifest_hash FROM segments")
    }
    # Key records written but not indexed (cut before the index row) are adopted.
    for path in (root / "keys").glob("*.key"):
        kid = path.stem
        if kid in index.stored_keys:
            continue
        try:
            rec = parse_key_record(path.read_bytes())
        except Exception as exc:
            quarantine(root, path, f"unreadable key record: {exc}")
            stats["quarantined"] += 1
            continue
        with index.tx() as db:
            db.execute("INSERT INTO keys VALUES (?, ?, 0)", (rec.key_id, wallclock.now()))
        index.stored_keys.add(rec.key_id)
    seen: set[tuple[str, int]] = set()
    seg_root = root / "seg"
    for sdir in sorted(p for p in seg_root.iterdir() if p.is_dir()):
        for path in sorted(sdir.glob("*.seg")):
            _recover_file(index, path, indexed, seen, stats)
        for stray in sdir.glob(".*.part"):
            stray.unlink()
    for (stream, seq), (sid, _h) in indexed.items():
        if (stream, seq) not in seen:
            log.error("spool: segment %s#%d is indexed but its file is missing", stream, seq)
            stats["lost"] += 1
            with index.tx() as db:
                db.execute("DELETE FROM segments WHERE id=?", (sid,))
    with index.lock:
        for cls in Retention:
            (used,) = index.db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM segments WHERE class=?", (cls.value,)
            ).fetchone()
            index.used[cls] = int(used)
    if stats["adopted"]:
        log.info(
            "spool: adopted %d sealed segments whose index rows the last stop lost",
            stats["adopted"],
        )
    if stats["quarantined"] or stats["lost"]:
        record_event(
            "spool_recovery",
            {k: v for k, v in stats.items() if v},
        )
    return stats


def _recover_file(
    index: SpoolIndex,
    path: Path,
    indexed: dict[tuple[str, int], tuple[int, str]],
    seen: set[tuple[str, int]],
    stats: dict[str, int],
) -> None:
    try:
        with path.open("rb") as f:
            info = read_segment_info(f)
    except (FormatError, OSError) as exc:
        quarantine(index.root, path, str(exc))
        stats["quarantined"] += 1
        return
    key = (info.stream, info.seq)
    if path != index.seg_path(info.stream, info.seq):
        quarantine(index.root, path, f"file name does not match its manifest ({info.label})")
        stats["quarantined"] += 1
        return
    if key in indexed:
        if indexed[key][1] != info.manifest_hash:
            quarantine(index.root, path, "manifest differs from the index")
            stats["quarantined"] += 1
            return
        seen.add(key)
        return
    next_seq, last_hash = index.chains.get(info.stream, (0, None))
    if info.seq < next_seq:
        # Its index row was deleted (the platform acknowledged it, or telemetry was
        # overwritten) and the stop came before the file's removal: finish the removal.
        path.unlink()
        stats["removed_acked"] = stats.get("removed_acked", 0) + 1
        log.info("spool: removed %s, acknowledged just before the last stop", info.label)
        return
    if info.seq == next_seq and info.manifest["prev"] == last_hash:
        # Renamed into place, cut before its index row: complete and sealed, so keep it.
        index.add_segment(
            info.stream,
            info.seq,
            info.manifest["boot"],
            info.key_id,
            info.size,
            info.manifest_hash,
            info.batch,
        )
        seen.add(key)
        stats["adopted"] += 1
        log.debug("spool: adopted %s, sealed but not indexed at the last stop", info.label)
        return
    quarantine(index.root, path, f"{info.label} is not in the index and does not extend its chain")
    stats["quarantined"] += 1
