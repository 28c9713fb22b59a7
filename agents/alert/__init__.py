"""The Alert agent: routed, deduplicated, redacted notifications; event history."""
