"""HemoStat's shared contract and plumbing: events, bus, settings, logging, redaction."""

__version__ = "0.1.0"
