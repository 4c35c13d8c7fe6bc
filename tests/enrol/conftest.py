"""The platform's acknowledgement key for the provisioning tests (provision requires it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.uplink.control import init_ack_keys


@pytest.fixture(scope="session")
def ack_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The platform's ack.key; ack.pub, which devices install, lies beside it."""
    return init_ack_keys(tmp_path_factory.mktemp("ack-key"))
