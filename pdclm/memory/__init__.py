"""Hierarchical memory (layer 2, imports pse and base): tiers, router, store, phases."""
