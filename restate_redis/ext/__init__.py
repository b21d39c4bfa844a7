"""Integrations above the core (internal modules; their public entry points are
``RedisStateStore.restate_state()`` and the store's tracing and metrics options)."""
