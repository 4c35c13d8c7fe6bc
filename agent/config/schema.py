"""The agent's configuration: one TOML file loaded into frozen dataclasses.

Every section lives beside the code it configures; this module puts them together. Unknown keys
and bad values fail at load with a message naming the field, e.g.
``uplink.port: must be 1..65535, got 70000``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.capture.settings import AudioSettings, VideoSettings
from agent.cellular.settings import CellularSettings
from agent.config.fields import check, load_dataclass, one_of
from agent.errors import ConfigError
from agent.fleet.settings import FleetSettings
from agent.gps.settings import GpsSettings
from agent.gps.time_settings import ReceiverSettings, TimeSettings
from agent.ids import device_id_problem
from agent.jt808.settings import Jt808Settings
from agent.power.settings import PowerSettings
from agent.runtime.settings import HealthSettings
from agent.storage.settings import SealSettings, SpoolSettings
from agent.talk.settings import TalkSettings
from agent.uplink.settings import UplinkSettings
from agent.web.settings import WebSettings


def _device_id(v: object) -> str | None:
    """agent.ids' rule (ASCII, no leading dot or dash, not a reserved name)."""
    return device_id_problem(v)


@dataclass(frozen=True)
class DeviceSettings:
    id: str = field(default="", metadata=check(_device_id))
    # bodycam | tracker | dashcam
    profile: str = field(default="tracker", metadata=check(one_of("bodycam", "tracker", "dashcam")))
    officer: str = ""  # officer number (body cameras)
    vehicle: str = ""  # vehicle id (trucks)
    unit: str = ""  # unit code


@dataclass(frozen=True)
class KeySettings:
    # The device's Ed25519 signing key (PEM, mode 0600).
    device_key: Path = Path("/etc/edge-agent/keys/device.key")
    # The platform's X25519 public key: data keys are wrapped to it.
    platform_public: Path = Path("/etc/edge-agent/keys/platform.pub")


@dataclass(frozen=True)
class LogSettings:
    level: str = field(default="info", metadata=check(one_of("debug", "info", "warning", "error")))


@dataclass(frozen=True)
class AgentConfig:
    device: DeviceSettings = field(default_factory=DeviceSettings)
    keys: KeySettings = field(default_factory=KeySettings)
    seal: SealSettings = field(default_factory=SealSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    gps: GpsSettings = field(default_factory=GpsSettings)
    uplink: UplinkSettings = field(default_factory=UplinkSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    talk: TalkSettings = field(default_factory=TalkSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    power: PowerSettings = field(default_factory=PowerSettings)
    cellular: CellularSettings = field(default_factory=CellularSettings)
    web: WebSettings = field(default_factory=WebSettings)
    log: LogSettings = field(default_factory=LogSettings)
    # chrony as the clock's reference; the GNSS receiver's own settings (time_settings.py)
    time: TimeSettings = field(default_factory=TimeSettings)
    receiver: ReceiverSettings = field(default_factory=ReceiverSettings)
    # a JT/T 808 terminal beside the MQTT uplink (tracker and dashcam profiles)
    jt808: Jt808Settings = field(default_factory=Jt808Settings)


def check_profile(cfg: AgentConfig) -> None:
    """Refuse a config whose parts do not fit its profile, naming the field."""
    profile = cfg.device.profile
    if profile == "tracker" and (cfg.video.enabled or cfg.audio.enabled or cfg.talk.enabled):
        which = (
            "video.enabled"
            if cfg.video.enabled
            else "audio.enabled"
            if cfg.audio.enabled
            else "talk.enabled"
        )
        raise ConfigError(
            f"{which}: the tracker profile records no video or audio "
            "(set device.profile to dashcam or bodycam)"
        )
    if profile == "dashcam" and cfg.video.enabled and cfg.video.mode != "continuous":
        raise ConfigError("video.mode: the dashcam profile records continuously")
    if cfg.jt808.enabled and profile not in ("tracker", "dashcam"):
        raise ConfigError(
            "jt808.enabled: the JT/T 808 terminal is for the tracker and dashcam profiles"
        )


def parse_config(text: str, origin: str = "config") -> AgentConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    cfg = load_dataclass(AgentConfig, data)
    if not cfg.device.id:
        raise ConfigError("device.id: required")
    return _with_board_video_defaults(cfg, data)


def _with_board_video_defaults(cfg: AgentConfig, data: dict[str, object]) -> AgentConfig:
    """``[video]`` keys the file leaves out follow this board's row (agent/capture/boards.py)."""
    from agent.capture.boards import apply_board_defaults, detect

    given = data.get("video", {})
    _model, board = detect()
    video = apply_board_defaults(cfg.video, given if isinstance(given, dict) else {}, board)
    return dataclasses.replace(cfg, video=video)


def load_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return parse_config(text, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
