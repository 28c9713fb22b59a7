"""What Docker really did, from its live event stream.

The daemon answers `events?since=` from a buffer of its last 256 events only, which a few dozen
containers (or another test on the same engine) overflow in seconds; a count taken that way can
miss a restart. This recorder follows the live stream of every container from the first time it
is asked (test containers carry `hemostat.test`, but not all: an autoheal test's must carry no
HemoStat label), in a thread, and answers from its own log."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from tests.support.services import TEST_IMAGE, TEST_LABEL


class DockerEventLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self._nanos: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DockerEventLog:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="docker-events", daemon=True)
            self._thread.start()
            self._started.wait(30)
        return self

    def _follow(self) -> None:
        import docker

        since: float | None = None
        while True:
            try:
                client = docker.from_env(timeout=None)
                stream = client.api.events(
                    since=since,
                    decode=True,
                    filters={"type": "container"},
                )
                self._started.set()
                for event in stream:
                    nano = int(event.get("timeNano", 0))
                    at = nano / 1e9
                    since = at
                    with self._lock:
                        cid = str(event.get("id", ""))
                        entries = self._events[cid]
                        item = (at, str(event.get("Action", "")))
                        if item not in entries:  # `since` replays the last second on reconnect
                            entries.append(item)
                            self._nanos[cid].append((nano, item[1]))
            except Exception:  # the engine went away: follow it again when it is back
                self._started.set()
                time.sleep(0.5)

    def settle(self, client: Any, image: str) -> None:
        """Return once every event Docker emitted before this call is in the log: events come
        in order, so seeing a marker container's `create` means everything before it arrived."""
        marker = client.api.create_container(image, ["true"], labels={TEST_LABEL: "marker"})["Id"]
        try:
            deadline = time.monotonic() + 30
            while self.count(marker, "create") == 0:
                if time.monotonic() > deadline:
                    raise AssertionError("the Docker event stream stopped delivering")
                time.sleep(0.01)
        finally:
            client.api.remove_container(marker, force=True)

    def count(self, container_id: str, action: str, since: float = 0.0) -> int:
        with self._lock:
            return sum(
                1 for at, a in self._events.get(container_id, ()) if a == action and at >= since
            )

    def nanos(self, container_id: str, action: str) -> list[int]:
        """The daemon's exact timestamps (ns) of those events."""
        with self._lock:
            return [n for n, a in self._nanos.get(container_id, ()) if a == action]

    def times(self, container_id: str, action: str, since: float = 0.0) -> list[float]:
        with self._lock:
            return [
                at for at, a in self._events.get(container_id, ()) if a == action and at >= since
            ]


EVENTS = DockerEventLog()


def docker_events() -> DockerEventLog:
    return EVENTS.start()


def count_events(client: Any, container_id: str, action: str, since: float = 0.0) -> int:
    """How many `action` events Docker emitted for the container since `since` (settled)."""
    EVENTS.settle(client, TEST_IMAGE)
    return EVENTS.count(container_id, action, since)
