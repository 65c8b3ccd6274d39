"""Data (layer 1, imports base only): byte shards, reasoning tasks, episodes, human examples."""
