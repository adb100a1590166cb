"""Precision and placement: float8 layers, offload (model, sequential, group), pinned host-to-GPU
transfer, attention backends and fused projections, speed levers, the compile cache, the profile's knobs.

May import: the engine's core vocabulary (``phases``, ``request``), profile, errors. Never
``zitops.engine.features`` nor the assemblers (``diffusers_engine``, ``factory``, ``full``, ``faulty``).
"""
