"""``zitops bench``: plain diffusers vs the zitops engine vs the engine behind the agent.

``report`` (torch-free) holds the results, the table and the JSON; ``measure``
runs the baseline and the engine in-process; ``agent_http`` times a real agent
over loopback HTTP; ``core.run`` ties them together.
"""
