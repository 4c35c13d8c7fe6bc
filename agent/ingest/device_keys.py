"""Device keys: registered ones (``devices=DIR`` holding ``<device>.pub``) are the production
setting; a device without one is refused. Trust on first use pins the first key a device
presents in ``<store>/<device>/device.pub`` (laboratories only, logged loudly).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import ids
from agent.errors import KeyFileError, VerificationError
from agent.ingest.store_files import StoreFiles
from agent.storage.durable import write_atomic
from agent.storage.keys import fingerprint, raw_public

# The store's parts log under its name, as they did when they were one module.
log = logging.getLogger("agent.ingest.store")


class DeviceKeys(StoreFiles):
    """The device key registry and trust on first use (a part of the Store)."""

    devices: Path | None
    tofu: bool
    _pins: dict[str, Ed25519PublicKey]

    def pinned(self, device: str) -> Ed25519PublicKey | None:
        """The device's registered (or, under trust on first use, pinned) key; None if none."""
        with self._lock:
            return self._pinned(device)

    def _pinned(self, device: str) -> Ed25519PublicKey | None:
        ids.check_device_id(device)
        pin = self._pins.get(device)
        if pin is not None:
            return pin
        for path in (
            ids.contained(self.devices, f"{device}.pub") if self.devices else None,
            ids.contained(self.root, device, "device.pub") if self.tofu else None,
        ):
            if path is not None and path.exists():
                try:
                    key = serialization.load_pem_public_key(path.read_bytes())
                except ValueError as exc:
                    raise KeyFileError(f"{path}: not a PEM public key: {exc}") from None
                if not isinstance(key, Ed25519PublicKey):
                    raise KeyFileError(f"{path}: not an Ed25519 public key")
                self._pins[device] = key
                return key
        if not self.tofu:
            where = self.devices if self.devices is not None else "--devices"
            raise VerificationError(
                f"device {device!r} is not registered (no {device}.pub in {where}); "
                "register its key (edge-agent provision writes it) before it can deliver"
            )
        return None

    def _pin(self, device: str, device_pub_hex: str) -> Ed25519PublicKey:
        """The key to check ``device``'s records against: its registered key, or (trust on
        first use only) the key of its first verified record, pinned."""
        pinned = self._pinned(device)
        if pinned is not None:
            return pinned
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(device_pub_hex))
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        path = ids.contained(self.root, device, "device.pub")
        self._mkdirs(path.parent)
        write_atomic(path, pem, self.tmp)
        log.warning(
            "ingest: TRUST ON FIRST USE: pinned device %s to the key it presented, %s "
            "(not a registered key)",
            device,
            fingerprint(raw_public(key)),
        )
        self._pins[device] = key
        return key
