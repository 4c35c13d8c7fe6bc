"""Child process of the recording power-cut test: records until it is killed.

A continuous recording (synthetic camera, as fast as it encodes) into a spool; after each
fragment the journal has made durable it prints ``FRAG recording part sha256(bytes)``. A line
printed is a promise: those bytes must be in the platform's hands after the cut. With
``no-fragment-fsync`` the journal skips its per-fragment fsync (the test that must then fail).
"""

from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path

from agent.capture.jobs import FragmentJob, JournalWriter, RecordingJob
from agent.capture.recorder import Recorder
from agent.capture.settings import VideoSettings
from agent.capture.sim import SyntheticSource
from agent.storage.keys import load_platform_public, load_signing_key
from agent.storage.sealer import Sealer
from agent.storage.settings import SealSettings, SpoolSettings
from agent.storage.spool import Spool

SETTINGS = VideoSettings(
    width=160, height=120, fps=10, mode="continuous", segment_s=1, prebuffer_s=0, keyframe_s=0.2
)


def main() -> None:
    spool_dir, device_key, platform_pub, seed = sys.argv[1:5]
    sealer = Sealer(
        device_id="cam-cut",
        boot_id=f"boot-{seed}",
        signing_key=load_signing_key(Path(device_key)),
        platform_public=load_platform_public(Path(platform_pub)),
        settings=SealSettings(),
    )
    spool = Spool(SpoolSettings(dir=Path(spool_dir), reserve_mb=0), sealer)
    handle = JournalWriter.handle

    def promising(self: JournalWriter, job: FragmentJob | RecordingJob) -> None:
        handle(self, job)
        if isinstance(job, FragmentJob) and not self.failing:
            digest = hashlib.sha256(job.data).hexdigest()
            print(f"FRAG {job.recording} {job.part} {digest}", flush=True)

    JournalWriter.handle = promising  # type: ignore[method-assign]
    if len(sys.argv) > 5 and sys.argv[5] == "no-fragment-fsync":
        # A deliberately broken journal for the test that shows the cut test catches it.
        from agent.storage.segjournal import SegmentJournal

        SegmentJournal._sync_fragment = lambda self, fd: None  # type: ignore[method-assign]
    stop = threading.Event()
    source = SyntheticSource(160, 120, 10, stop=stop)
    recorder = Recorder(SETTINGS, source, spool, stop)
    recorder.start_threads()
    print("READY", flush=True)
    stop.wait()


if __name__ == "__main__":
    main()
