"""The Analyzer: one decision per health alert — runbook, rules, optional LLM."""

__all__: list[str] = []
