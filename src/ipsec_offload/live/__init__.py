"""Live mode: the model on real interfaces. `packet_socket` reads and writes an interface's
frames, `agent` runs the agent between two of them, `ctl` is a config client that speaks the
agent's config frames on an interface (docs/live.md)."""
