"""Runs ``edge-agent`` with the provisioning commands registered.

Until ``agent.provision_commands`` is listed in ``agent.cli.COMMAND_MODULES`` (the wiring is the
composition root owner's), the tests add it here; once listed, this adds nothing.
"""

from __future__ import annotations

import sys

import agent.cli as cli

if "agent.provision_commands" not in cli.COMMAND_MODULES:
    cli.COMMAND_MODULES = (*cli.COMMAND_MODULES, "agent.provision_commands")  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(cli.main())
