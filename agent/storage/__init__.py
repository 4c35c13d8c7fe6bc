"""Sealing and the durable on-device spool."""
