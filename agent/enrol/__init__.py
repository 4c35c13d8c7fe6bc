"""Enrolment: ``edge-agent provision`` (a blank device to an enrolled one) and ``edge-agent
selftest`` (does this device work end to end?); ``cli.py`` holds both commands."""
