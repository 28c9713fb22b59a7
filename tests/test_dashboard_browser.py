"""The running dashboard in a real headless Chromium (Debian's, driven by Playwright): the seeded
containers and an incident are visible, Approve works, and screenshots are kept as artifacts."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from shared.approvals import ApprovalStore, ProposalState
from shared.container_state import ContainerSnapshot, write_snapshots
from shared.redis_server import free_port
from tests.support.dashboard_seed import seed
from tests.support.services import unavailable

pytestmark = pytest.mark.redis
ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        unavailable("Debian's chromium is not installed (make test installs it)")
    return str(found)


def start_dashboard(redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMOSTAT_")}
    env |= {"REDIS_URL": redis_url, "HEMOSTAT_DASHBOARD_REFRESH_S": "2"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "dashboard/app.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).text == "ok":
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the dashboard did not start")


async def add_container(redis_url: str, name: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        snapshot = ContainerSnapshot(
            id="f" * 64, name=name, host="h1", state="running", updated_at=time.time()
        )
        await write_snapshots(client, [snapshot], ttl_s=600)
    finally:
        await client.aclose()


def test_dashboard_in_a_real_browser(redis_url, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    binary = chromium()

    async def prepare():
        client = Redis.from_url(redis_url, decode_responses=True)
        try:
            return await seed(client)
        finally:
            await client.aclose()

    seeded = asyncio.run(prepare())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_dashboard(redis_url, port)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        wait_healthy(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            expect(page.get_by_text("Monitored containers")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Open incidents")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

            page.get_by_text("Containers", exact=True).click()
            expect(page.get_by_text("3 of 3 containers")).to_be_visible(timeout=20_000)
            expect(page.get_by_text("shop-db-1").first).to_be_visible()
            expect(page.get_by_text("shop-web-1").first).to_be_visible()
            expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
            expect(page.locator('[data-testid="stMultiSelect"]').first).to_be_visible()
            page.wait_for_timeout(1000)  # let the grid paint before the screenshot
            page.screenshot(path=str(ARTIFACTS / "dashboard-containers.png"), full_page=True)

            # A container appears while the page is open: the refresh shows it, no reload.
            # (Playwright's sync API owns this thread's event loop: write from another thread.)
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, add_container(redis_url, "shop-cache-1")).result()
            expect(page.get_by_text("4 of 4 containers")).to_be_visible(timeout=20_000)
            # (the grid draws on a canvas; its accessible cells say what it shows)
            expect(page.locator('[role="gridcell"]', has_text="shop-cache-1")).to_have_count(1)

            page.get_by_text("Incidents", exact=True).click()
            expect(page.get_by_text(f"Timeline of {seeded.incident_id}")).to_be_visible(
                timeout=20_000
            )
            expect(page.get_by_text("unhealthy (firing)").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "dashboard-incident.png"), full_page=True)

            page.get_by_text("Approvals", exact=True).click()
            approve = page.get_by_role("button", name="Approve")
            expect(approve).to_be_visible(timeout=20_000)
            approve.click()
            expect(page.get_by_text(f"Approved {seeded.pending_proposal}")).to_be_visible(
                timeout=20_000
            )
            page.screenshot(path=str(ARTIFACTS / "dashboard-approved.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)

    async def state():
        client = Redis.from_url(redis_url, decode_responses=True)
        try:
            return (await ApprovalStore(client).get(seeded.pending_proposal)).state
        finally:
            await client.aclose()

    assert asyncio.run(state()) is ProposalState.APPROVED
    assert (ARTIFACTS / "dashboard-approved.png").stat().st_size > 10_000
