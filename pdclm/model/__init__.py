"""The model (layer 3, imports memory, pse and base): one forward, generation, model folders."""
