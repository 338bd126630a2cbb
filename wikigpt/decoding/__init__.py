"""Decoding: the sampling knobs every tool shares (sampling), and the engine that decodes many requests in one batched forward per step (engine, its device-side step in decode)."""
