"""``restate-redis bench``: the adapter against raw redis-py and a Dapr-style layout."""
