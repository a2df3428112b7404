"""Running the ground station as a service: Prometheus collectors, embedded broker, children."""
