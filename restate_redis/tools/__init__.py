"""The tools on top of the library: the ``restate-redis`` command line, the admin API it and
the web UI share, the embedded server, the demo and the benchmark."""
