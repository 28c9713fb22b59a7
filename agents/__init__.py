"""HemoStat's agents, all built on `agents.base.BaseAgent`."""
