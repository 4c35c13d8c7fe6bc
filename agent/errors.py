"""The small error family every part of edge-agent raises.

Callers catch :class:`AgentError` at the edges (CLI, thread loops); the subclasses say which
part of the system refused and why. Messages are written for the person who will read them:
a technician at a truck or a platform engineer auditing evidence.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error edge-agent raises on purpose."""


class ConfigError(AgentError):
    """A configuration file or value is wrong; the message names the field."""


class KeyFileError(AgentError):
    """A key file is missing, unreadable, malformed or too permissive."""


class FormatError(AgentError):
    """Bytes that claim to be a sealed object are not in a format we accept."""


class VerificationError(AgentError):
    """A sealed object failed a signature, hash, decryption or chain check."""


class SpoolError(AgentError):
    """The on-device spool could not store or retrieve a segment."""


class EvidenceRefused(SpoolError):
    """New evidence was refused because its retention quota or the disk is full."""


class NmeaError(AgentError):
    """A NMEA sentence could not be read (checksum, framing or field error)."""


class SourceError(AgentError):
    """A capture source (camera, microphone, GNSS receiver) failed or vanished."""


class UplinkError(AgentError):
    """The link to the platform failed (broker, TLS, authorisation, protocol)."""


class CommandError(AgentError):
    """A platform command was refused (bad signature, expired, replayed, invalid)."""
