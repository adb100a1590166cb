"""What an operator watches a fleet with: Prometheus alert rules, the Grafana dashboard, and their manifests.

Pure functions from a resolved profile to plain data (dicts that become YAML
or JSON). They import only the profile and the standard library, never the
agent, so ``zitops deploy`` renders them without the runtime.
"""
