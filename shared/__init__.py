"""HemoStat's shared contract and plumbing: events, bus, settings, logging, redaction."""

__all__ = ["__version__"]

__version__ = "0.1.0"
