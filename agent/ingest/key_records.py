"""Key records: a device's signed record of a data key, wrapped to the platform's key; kept as
sent once it verifies against the device's key (and, with the platform key, unwraps).
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent import ids
from agent.errors import AgentError, FormatError, VerificationError
from agent.ingest.device_keys import DeviceKeys
from agent.storage.durable import write_atomic
from agent.storage.seal import parse_key_record
from agent.uplink import protocol as proto

# The store's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.ingest.store")


class KeyRecords(DeviceKeys):
    """Takes key records (a part of the Store)."""

    platform_key: X25519PrivateKey | None

    def put_key(self, device: str, data: bytes) -> proto.Ack | None:
        ids.check_device_id(device)
        with self._lock:
            try:
                rec = parse_key_record(data)
            except (FormatError, VerificationError, ValueError, RecursionError) as exc:
                self.stats.rejected += 1
                log.warning("ingest: %s sent an unreadable key record: %s", device, exc)
                return None
            kid = rec.key_id
            if ids.KEY_ID_RE.match(kid) is None or not kid.isascii():
                log.warning("ingest: %s sent a key record with a malformed id", device)
                return None
            try:
                if rec.device != device:
                    raise VerificationError(
                        f"key record claims device {rec.device!r} but was sent by {device!r}"
                    )
                trusted = self._pin(device, rec.manifest["device_pub"])
                parse_key_record(data, trusted)
                if self.platform_key is not None:
                    rec.unwrap(self.platform_key)
            except (AgentError, ValueError) as exc:
                self.stats.rejected += 1
                log.warning("ingest: refused key %s from %s: %s", kid, device, exc)
                return proto.Reject("key", str(exc), key_id=kid)
            path = self.key_path(device, kid)
            if not path.exists():
                self._mkdirs(path.parent)
                write_atomic(path, data, self.tmp)
                self.stats.keys += 1
            return proto.KeyAck(kid)
