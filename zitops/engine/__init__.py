"""The generation engine. Only ``zitops.engine.diffusers_engine`` imports torch."""
