"""Resource counters and their derivation: pure maths, cgroup v1/v2 file layouts, and the real
cgroup reader checked against the Docker stats API on a live container."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agents.monitor.cgroups import CgroupReader
from agents.monitor.stats import Counters, counters_from_api, derive

GiB = 2**30
CID = "f" * 64


def c(at, cpu_s, mem=0, inactive=0, rx=0, tx=0, rd=0, wr=0):
    return Counters(
        at=at,
        source="cgroup",
        cpu_ns=int(cpu_s * 1e9),
        memory_usage=mem,
        memory_inactive_file=inactive,
        net_rx=rx,
        net_tx=tx,
        blk_read=rd,
        blk_write=wr,
    )


def test_cpu_is_normalised_against_all_host_cores_without_a_limit():
    s = derive(c(0, 0), c(10, 10), cpu_limit=None, host_cores=4, memory_limit=None, host_memory=GiB)
    assert s.cpu_cores == pytest.approx(1.0)
    assert s.cpu_percent == pytest.approx(25.0)


def test_cpu_is_normalised_against_the_container_limit():
    s = derive(c(0, 0), c(10, 4.5), cpu_limit=0.5, host_cores=4, memory_limit=None, host_memory=GiB)
    assert s.cpu_percent == pytest.approx(90.0)


def test_memory_uses_the_working_set_against_the_limit():
    s = derive(
        None,
        c(0, 0, mem=600, inactive=100),
        cpu_limit=None,
        host_cores=1,
        memory_limit=1000,
        host_memory=GiB,
    )
    assert s.memory_working_set == 500
    assert s.memory_percent == pytest.approx(50.0)
    assert not s.memory_limit_is_host
    assert s.cpu_percent is None, "CPU needs two readings"


def test_memory_without_a_limit_is_measured_against_host_memory_and_flagged():
    s = derive(
        None,
        c(0, 0, mem=GiB // 4),
        cpu_limit=None,
        host_cores=1,
        memory_limit=None,
        host_memory=GiB,
    )
    assert s.memory_percent == pytest.approx(25.0)
    assert s.memory_limit_is_host


def test_rates_and_a_counter_reset_after_restart():
    prev = c(0, 5, rx=1000, tx=0, rd=0, wr=4096)
    s = derive(
        prev,
        c(2, 6, rx=3000, tx=500, rd=8192, wr=4096),
        cpu_limit=None,
        host_cores=1,
        memory_limit=None,
        host_memory=GiB,
    )
    assert (s.net_rx_bps, s.net_tx_bps, s.blk_read_bps, s.blk_write_bps) == (1000, 250, 4096, 0)
    reset = derive(
        prev, c(2, 0.1), cpu_limit=None, host_cores=1, memory_limit=None, host_memory=GiB
    )
    assert reset.cpu_percent is None, "a counter going backwards is a restart, not negative CPU"


def test_counters_from_an_api_stats_document():
    doc = {
        "cpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}},
        "memory_stats": {"usage": 5000, "limit": 10000, "stats": {"total_inactive_file": 1000}},
        "networks": {
            "eth0": {"rx_bytes": 10, "tx_bytes": 20},
            "eth1": {"rx_bytes": 1, "tx_bytes": 2},
        },
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"op": "Read", "value": 7},
                {"op": "Write", "value": 9},
                {"op": "Total", "value": 16},
            ]
        },
    }
    got = counters_from_api(doc, at=1.0)
    assert (got.cpu_ns, got.memory_usage, got.memory_inactive_file) == (2_000_000_000, 5000, 1000)
    assert (got.net_rx, got.net_tx, got.blk_read, got.blk_write) == (11, 22, 7, 9)


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_layout(tmp_path):
    for ctl in ("memory", "cpuacct", "blkio"):
        (tmp_path / ctl).mkdir()
    write(tmp_path, f"cpuacct/docker/{CID}/cpuacct.usage", "1500000000\n")
    write(tmp_path, f"memory/docker/{CID}/memory.usage_in_bytes", "4000\n")
    write(tmp_path, f"memory/docker/{CID}/memory.limit_in_bytes", "9223372036854771712\n")
    write(tmp_path, f"memory/docker/{CID}/memory.stat", "cache 10\ntotal_inactive_file 1000\n")
    write(
        tmp_path,
        f"blkio/docker/{CID}/blkio.throttle.io_service_bytes",
        "8:0 Read 100\n8:0 Write 50\n8:16 Read 1\n8:0 Total 150\nTotal 151\n",
    )
    reader = CgroupReader(tmp_path, proc=tmp_path / "noproc")
    assert reader.version == 1
    got = reader.read(CID, pid=0, at=3.0)
    assert got.cpu_ns == 1_500_000_000
    assert (got.memory_usage, got.memory_inactive_file) == (4000, 1000)
    assert got.memory_limit is None, "v1's huge number means no limit"
    assert (got.blk_read, got.blk_write) == (101, 50)


def test_cgroup_v2_systemd_layout_found_through_proc(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc"
    write(root, "cgroup.controllers", "cpu memory io\n")
    scope = f"system.slice/docker-{CID}.scope"
    write(root, f"{scope}/cpu.stat", "usage_usec 2500000\nuser_usec 1\n")
    write(root, f"{scope}/memory.current", "8192\n")
    write(root, f"{scope}/memory.max", "16384\n")
    write(root, f"{scope}/memory.stat", "anon 10\ninactive_file 2048\n")
    write(root, f"{scope}/io.stat", "8:0 rbytes=10 wbytes=20 rios=1 wios=2\n")
    write(proc, "42/cgroup", f"0::/{scope}\n")
    write(
        proc,
        "42/net/dev",
        "Inter-|\n face |\n    lo: 99 0 0 0 0 0 0 0 99 0 0 0 0 0 0 0\n"
        "  eth0: 300 3 0 0 0 0 0 0 400 4 0 0 0 0 0 0\n",
    )
    reader = CgroupReader(root, proc=proc)
    assert reader.version == 2
    got = reader.read("other-id-not-in-layout", pid=42, at=1.0)
    assert got.cpu_ns == 2_500_000_000
    assert (got.memory_usage, got.memory_limit, got.memory_inactive_file) == (8192, 16384, 2048)
    assert (got.blk_read, got.blk_write, got.net_rx, got.net_tx) == (10, 20, 300, 400)


def test_missing_cgroup_reads_as_none(tmp_path):
    write(tmp_path, "cgroup.controllers", "")
    assert CgroupReader(tmp_path).read(CID, pid=0, at=0) is None
    assert not CgroupReader(tmp_path / "nothing").available


@pytest.mark.docker
def test_real_cgroup_reader_agrees_with_the_stats_api(docker, test_image, run_label):
    reader = CgroupReader()
    if not reader.available:
        pytest.skip("no cgroup filesystem visible here")
    container = docker.containers.run(
        test_image,
        ["sh", "-c", "while :; do :; done"],
        labels=run_label,
        detach=True,
        nano_cpus=500_000_000,
        mem_limit="64m",
    )
    container.reload()
    pid = container.attrs["State"]["Pid"]
    first = reader.read(container.id, pid, time.monotonic())
    time.sleep(1.0)
    second = reader.read(container.id, pid, time.monotonic())
    api = docker.api.stats(container.id, stream=False, one_shot=True)
    sample = derive(
        first, second, cpu_limit=0.5, host_cores=2, memory_limit=64 * 2**20, host_memory=GiB
    )
    # How busy a 2-core machine lets the burner be is not ours to assert; the maths is: CPU % is
    # the cores it used against its 0.5-core allowance, and it used some.
    assert sample.cpu_cores is not None
    assert sample.cpu_cores > 0
    assert sample.cpu_percent == pytest.approx(sample.cpu_cores / 0.5 * 100), sample
    assert sample.memory_limit == 64 * 2**20
    api_cpu = api["cpu_stats"]["cpu_usage"]["total_usage"]
    assert abs(api_cpu - second.cpu_ns) / 1e9 < 0.5, "same counter, read moments apart"
    assert second.net_rx is not None
