"""The Alert agent: routed, deduplicated, redacted notifications; event history."""

__all__: list[str] = []
