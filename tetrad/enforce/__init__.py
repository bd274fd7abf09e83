"""Enforcement that prevents: kernel mechanisms that refuse an operation
before it takes effect, as opposed to killing the process afterwards."""
