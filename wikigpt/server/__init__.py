"""The HTTP server behind serve.py: request checks, generation through the engine, replies, routes."""
