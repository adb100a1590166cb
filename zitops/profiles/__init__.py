"""Built-in profiles live here as YAML data; :mod:`zitops.profile` loads them."""
