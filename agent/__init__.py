"""edge-agent: capture, seal, store and forward evidence from field devices."""

__version__ = "0.1.0"
