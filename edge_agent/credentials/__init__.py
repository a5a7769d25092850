"""Where the AWS sinks' credentials come from: the shared session, the IoT certificate."""
