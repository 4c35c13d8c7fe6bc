"""The cellular link: ModemManager's view of the modem, and what the agent sent per lane."""
