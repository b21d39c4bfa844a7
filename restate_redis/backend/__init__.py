"""The Redis backend under the core (internal): connection forms and URLs, the Lua scripts,
the command link, retries and replication. It imports nothing of the core but the errors."""
