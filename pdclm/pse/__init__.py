"""Pattern Stream Encoder (layer 1, imports base only): entropy model, patcher, patch encoder."""
