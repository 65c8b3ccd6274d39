"""Cognition (layer 4, imports model and below): CCM, reflection network, rewards, self-play."""
