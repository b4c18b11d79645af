"""Functional tests: a real server on loopback, driven by raw sockets and HTTP clients."""
