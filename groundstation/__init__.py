"""Mars relay telemetry ground station: MQTT -> archive -> CCSDS decoder -> Prometheus."""

__version__ = "0.1.0"
