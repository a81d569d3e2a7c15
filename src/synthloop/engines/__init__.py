"""Engines: where generation and verification run beyond this process (an inference server, Ray)."""
