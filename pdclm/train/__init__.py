"""Training (layer 6, imports eval and below): loop, checkpoints, parallelism, the phases."""
