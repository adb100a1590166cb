"""The worker process: owns one engine on one device and runs jobs sent by the agent."""
