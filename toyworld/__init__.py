"""Toy world: captioned shape scenes and a tiny Stable-Diffusion-shaped model for offline editing tests."""
