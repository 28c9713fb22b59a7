from __future__ import annotations

import importlib
import sys

BENCHES = {
    "bus": "bench.bus_throughput",
    "monitor-latency": "bench.monitor_latency",
    "monitor-poll": "bench.monitor_poll",
    "monitor-rss": "bench.monitor_rss",
    "analyzer": "bench.analyzer_latency",
    "responder": "bench.responder_latency",
    "alert": "bench.alert_burst",
    "metrics": "bench.metrics_exporter",
    "e2e": "bench.e2e_healing",
    "burst": "bench.burst_healing",
    "fleet": "bench.fleet",
    "redis-failover": "bench.redis_failover",
}


def main(argv: list[str]) -> int:
    from shared.log import configure_logging
    from shared.settings import LogFormat

    configure_logging("WARNING", LogFormat.CONSOLE)
    names = argv or list(BENCHES)
    failed = []
    for name in names:
        if name not in BENCHES:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}")
            return 2
        if not importlib.import_module(BENCHES[name]).run():
            failed.append(name)
    print(
        f"\n{len(names) - len(failed)}/{len(names)} benchmarks met their targets"
        + (f"; missed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
