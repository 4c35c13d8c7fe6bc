"""The platform's evidence store: chunks in, verified segments out, each exactly once.

The class is put together from its parts, a module each in this package: ``store_files``
(paths, private files, durability), ``device_keys`` (registry, trust on first use),
``key_records``, ``partials`` (uploads in progress, quotas), ``segment_checks``
(verification, decryption), ``landing`` (whole segments, O_TMPFILE, ``link()``) and
``chunks`` (chunk assembly, progress for resume).

Layout (a generic verifier walks ``seg/`` and ``keys/``)::

    <store>/<device>/device.pub                 the device's Ed25519 key (pinned on first use,
                                                or given with --devices)
    <store>/<device>/keys/<key_id>.key          signed key records, as the device sent them
    <store>/<device>/seg/<stream>/<seq:012d>.seg   sealed segments, byte-identical to the spool
    <store>/<device>/plain/<stream>/<seq:012d>.bin decrypted (with the platform key only)
    <store>/<device>/partial/<stream>/<seq:012d>-<hash>/<offset:012d>   chunks being assembled
    <store>/<device>/heads.json                 the device's signed stream heads (heads.py)
    <store>/.tmp/                               assembly; files older than an hour are
                                                removed at start (left by a crash)

Names from outside are checked before they become paths: device ids, streams, key ids and
hashes by :mod:`agent.ids` (a device id from the topic that is not valid is refused), and every
path is built with :func:`agent.ids.contained`, so nothing lands outside the store. Files are
created 0600 and directories 0700 whatever the umask (decrypted evidence is in here).

Device keys: registered ones (``devices=DIR`` holding ``<device>.pub``, what ``edge-agent
provision`` produces for the platform) are the production setting; a device without one is
refused. Trust on first use (``trust_on_first_use=True``: the first key a device presents is
pinned in ``<store>/<device>/device.pub``) is for laboratories only and logged loudly.

Uploads in progress are bounded per device (:class:`PartialLimits`): an announced size beyond
the device's quota is refused at once; bytes held or uploads open beyond the quota make room by
dropping that device's idle uploads (the device still has them and resends), else are answered
"retry later"; an upload that saw no chunk for ``expiry_s`` is dropped
(:meth:`Store.expire_partials`).

Every file lands by rename (temp, fsync, rename, fsync directory). The sealed segment's final
name is the store's record that it was accepted: it is created with ``link()``, which fails if
another worker got there first, so several workers may share one store. A progress report is
only sent after the chunks it covers are on disk (fsync), so a device never skips bytes the
platform would lose in a crash. The store's key is (device, stream, seq); the boot and the
manifest hash tell a re-delivery (acknowledged again: "duplicate") from a conflict (refused).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.ingest.chunks import ChunkAssembly
from agent.ingest.key_records import KeyRecords
from agent.ingest.partials import Partial, PartialLimits, QuotaFull
from agent.ingest.store_files import DIR_MODE, MIB, StoreStats, private_dirs

# Names the ingest, the review page and tests import from here.
__all__ = ["PartialLimits", "QuotaFull", "Store", "StoreStats", "private_dirs"]

log = logging.getLogger(__name__)

STALE_TMP_S = 3600.0


class Store(ChunkAssembly, KeyRecords):
    """See the module docstring. Thread-safe (one lock); several processes may share a store."""

    def __init__(
        self,
        root: Path,
        *,
        platform_key: X25519PrivateKey | None = None,
        devices: Path | None = None,
        trust_on_first_use: bool | None = None,
        progress_every: int = MIB,
        limits: PartialLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``trust_on_first_use``: None means "only when no ``devices`` directory is given"
        (the Python API's default for laboratories; ``edge-agent ingest`` asks explicitly)."""
        if not root.exists():
            root.mkdir(mode=DIR_MODE, parents=True)
            os.chmod(root, DIR_MODE)
        self.root = root.resolve()
        self.platform_key = platform_key
        self.devices = devices
        self.tofu = devices is None if trust_on_first_use is None else trust_on_first_use
        self.progress_every = progress_every
        self.limits = limits or PartialLimits()
        self._clock = clock
        self.stats = StoreStats()
        self._lock = threading.Lock()
        # Uploads in progress, per device: (stream, seq, hash) -> Partial; bytes held each.
        self._partials: dict[str, dict[tuple[str, int, str], Partial]] = {}
        self._held: dict[str, int] = {}
        self._hashes: OrderedDict[Path, str] = OrderedDict()
        self._pins: dict[str, Ed25519PublicKey] = {}
        self._dirs: dict[tuple[str, ...], Path] = {}
        self._tmpfile = hasattr(os, "O_TMPFILE") and Path("/proc/self/fd").is_dir()
        self.tmp = self.root / ".tmp"
        private_dirs(self.root, self.tmp)
        if self.tofu:
            log.warning(
                "ingest: TRUST ON FIRST USE: the first key a device presents is pinned as its "
                "own; a stolen or forged certificate can claim a device that has not sent yet. "
                "Register device keys (--devices DIR) in production"
            )
        # Group commit: inside ``batch()`` each fsync is replaced by one syncfs at its end.
        self._batching = False
        self._dirty = False
        # Left by a crash. Another worker sharing the store may be assembling right now: only
        # what is older than an hour is stale.
        for stale in self.tmp.iterdir():
            try:
                if time.time() - stale.stat().st_mtime > STALE_TMP_S:
                    stale.unlink(missing_ok=True)
            except FileNotFoundError:
                continue

    # ------------------------------------------------------------------ reading
