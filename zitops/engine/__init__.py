"""The generation engine; torch is imported only by the modules the worker loads, never on the CLI's path.

The core sits here: the engine interface (``base``), the request, loading (``loader``, ``offline``,
``tiny``, ``full``), the pipeline (``diffusers_engine``, assembled by ``factory``), samplers and
schedulers, stepping, output encoding, and the fault-injecting engine (``faulty``, ``leak``, ``oom``).
Rooms: ``precision/`` (fp8, offload, transfer, attention, accel, compile cache, knobs) and
``features/`` (img2img, LoRA, ControlNet). The rooms never import the assemblers
(``diffusers_engine``, ``factory``, ``full``, ``faulty``); ``features`` may use ``precision``, never back.
"""
