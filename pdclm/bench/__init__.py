"""Benchmarks (layer 8, imports everything but the CLI): experiments that train models."""
