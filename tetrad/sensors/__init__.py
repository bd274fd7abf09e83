"""Sensors: BPF programs and the decoding of what they report."""
