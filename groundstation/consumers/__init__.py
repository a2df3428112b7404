"""What is made of decoded packets: live telemetry state, flights and their figures, history."""
