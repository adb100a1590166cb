"""The resident agent: HTTP API, dispatcher, worker pool, watchdog. Never imports torch."""
