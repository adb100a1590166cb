"""Generation features over a loaded pipeline: img2img/inpaint, LoRA adapters and files, ControlNet.

May import: ``zitops.engine.precision``, the engine's core vocabulary (``request``, ``phases``), profile,
errors. Never the assemblers (``diffusers_engine``, ``factory``, ``full``, ``faulty``).
``lora_files`` and ``controlnet`` stay torch-free: the agent's edge imports them.
"""
