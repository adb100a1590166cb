"""zitops: operations agent and deployment manager for Z-Image-Turbo."""

__version__ = "0.1.0"
