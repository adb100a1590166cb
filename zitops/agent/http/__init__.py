"""The agent's HTTP edge: the FastAPI app, the API dialects (native, A1111, OpenAI), auth, hosts,
tenants, middleware, error mapping, request metrics, OpenAPI, the console and uvicorn's settings.

Routes talk to the dispatcher only through :class:`zitops.agent.contract.Service`.
May import: ``zitops.agent.dispatch``, ``zitops.agent.storage``, ``zitops.agent.ops``, ``zitops.agent.contract``,
``zitops.agent.progress`` and the package's shared modules (config, errors, engine request/LoRA/ControlNet
vocabulary). Nothing in the agent imports this room but ``zitops.agent.server``.
"""
