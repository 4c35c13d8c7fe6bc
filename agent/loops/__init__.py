"""How every long-lived loop of the agent survives: the loop guard (``guard.py``).

A low-level package: it imports only :mod:`agent.model` and :mod:`agent.wallclock`, so every
part (GPS, uplink, fleet, capture, talk, ingest, web, the runtime) may use it without an
import cycle (tests/core/test_architecture.py).
"""
