"""Rendering events for people: `compact` (tetra's one-line format)."""
