"""A fuzzer for the daemon: hypothesis-generated bodies sent over HTTP, every answer judged by one oracle."""
