"""CLI commands, one module each; imported lazily by zitops.cli."""
