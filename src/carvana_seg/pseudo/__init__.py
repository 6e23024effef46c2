"""Pseudo-labelling: confident test images for the next round, and what the rounds bought."""
