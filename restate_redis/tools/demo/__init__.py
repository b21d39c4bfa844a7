"""``restate-redis demo``: the example services, driven by worker processes or by a Restate
server, on an embedded Valkey."""
