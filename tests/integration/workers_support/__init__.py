"""Support code for the worker integration tests: handlers and the entry point worker subprocesses run."""
