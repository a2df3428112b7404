"""Where packets come in and are kept: the MQTT subscriber and the raw archive."""
