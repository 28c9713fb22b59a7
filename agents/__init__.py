"""HemoStat's agents, all built on `agents.base.BaseAgent`."""

__all__: list[str] = []
