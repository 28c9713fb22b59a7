"""The Metrics exporter: everything HemoStat knows, in Prometheus form on :9090/metrics."""

__all__: list[str] = []
