"""The device side of sealing: the signing key, the platform key and the current key epoch."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent import wallclock
from agent.ids import check_boot_id, check_device_id
from agent.storage.cipherchoice import CPUINFO, CipherChoice, choose_cipher
from agent.storage.keys import raw_public
from agent.storage.seal import (
    BodyWriter,
    ChainLink,
    DataKey,
    SegmentHeader,
    make_data_key,
    seal_segment,
    seal_trailer,
)
from agent.storage.settings import SealSettings

log = logging.getLogger(__name__)


class Sealer:
    """Seals segments for one device and boot.

    A data key lives for one epoch (at most ``key_epoch_s`` and never across a reboot) in
    memory only; its signed key record is stored once and shared by every segment of the epoch,
    so small records do not each pay a key wrap. Thread-safe.
    """

    def __init__(
        self,
        *,
        device_id: str,
        boot_id: str,
        signing_key: Ed25519PrivateKey,
        platform_public: X25519PublicKey,
        settings: SealSettings,
        clock: Callable[[], float] = wallclock.now,
        monotonic: Callable[[], float] = time.monotonic,
        cpuinfo: Path = CPUINFO,
    ) -> None:
        # Checked once here (a clear error at start) rather than at every seal: every
        # manifest names both, and a verifier refuses a segment whose ids are not valid.
        self.device_id = check_device_id(device_id)
        self.boot_id = check_boot_id(boot_id)
        self._signing_key = signing_key
        self._device_pub = raw_public(signing_key.public_key())
        self._platform_public = platform_public
        # ``cipher = "auto"`` is settled once, here: every body, journal and record of this
        # sealer uses the cipher chosen (settings.cipher names it from here on).
        self.cipher_choice: CipherChoice = choose_cipher(settings.cipher, cpuinfo)
        self.settings = dataclasses.replace(settings, cipher=self.cipher_choice.cipher)
        log.info("seal: cipher %s", self.cipher_choice)
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._key: DataKey | None = None
        self._key_born = 0.0

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        """The device key: it signs segments, key records and the stream heads."""
        return self._signing_key

    def current_key(self) -> DataKey:
        """The epoch's data key, making a new one when the epoch is over."""
        with self._lock:
            now = self._monotonic()
            if self._key is None or now - self._key_born >= self.settings.key_epoch_s:
                self._key = make_data_key(
                    device_id=self.device_id,
                    boot_id=self.boot_id,
                    signing_key=self._signing_key,
                    platform_public=self._platform_public,
                    created=self._clock(),
                )
                self._key_born = now
            return self._key

    def seal(
        self,
        out: BinaryIO,
        header: SegmentHeader,
        link: ChainLink,
        pieces: Iterable[bytes],
        key: DataKey,
    ) -> tuple[dict[str, Any], bytes]:
        return seal_segment(
            out,
            header=header,
            link=link,
            device_id=self.device_id,
            boot_id=self.boot_id,
            key=key,
            signing_key=self._signing_key,
            cipher=self.settings.cipher,
            chunk_size=self.settings.chunk_size,
            pieces=pieces,
            sealed_utc=self._clock(),
            device_pub=self._device_pub,
        )

    # Streamed sealing (the fragment journal): the body is written as it arrives.

    def open_body(self, key: DataKey, chunk_size: int) -> BodyWriter:
        """A body to fill chunk by chunk under ``key`` (see :class:`BodyWriter`)."""
        return BodyWriter(key, self.settings.cipher, chunk_size)

    def seal_body(
        self, out: BinaryIO, header: SegmentHeader, link: ChainLink, body: BodyWriter
    ) -> tuple[dict[str, Any], bytes]:
        """Write the signed trailer after a finished body."""
        return seal_trailer(
            out,
            body,
            header=header,
            link=link,
            device_id=self.device_id,
            boot_id=self.boot_id,
            signing_key=self._signing_key,
            sealed_utc=self._clock(),
            device_pub=self._device_pub,
        )
