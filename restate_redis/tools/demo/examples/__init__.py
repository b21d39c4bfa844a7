"""The example services the demo runs: a shopping cart and an order fulfilment workflow.

Handlers are plain async functions over a :class:`~restate_redis.RedisStateStore`, written the
way a Restate handler would use its context: exclusive sessions for handlers that change
state, shared sessions for read-only handlers, a workflow session for the run handler.
"""
