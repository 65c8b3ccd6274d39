"""Measures (layer 5, imports cognition and below): tasks, reflection, robustness, report."""
