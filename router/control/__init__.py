"""The control plane: CLI, supervisor, service, demo, dead-letter tools, metrics."""
