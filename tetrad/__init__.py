"""tetrad: a single-node eBPF security observability and enforcement daemon."""

__version__ = "0.1.0"
