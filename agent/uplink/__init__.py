"""Store-and-forward to the platform over MQTT."""
