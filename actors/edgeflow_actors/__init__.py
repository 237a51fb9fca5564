"""edgeflow's built-in actors. Each module is one actor type with its Config next to its code; the
registry imports a module only when a topology uses its type (entry points in pyproject.toml)."""
