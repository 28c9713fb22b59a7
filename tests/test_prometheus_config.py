"""Prometheus, Alertmanager and Grafana files, checked by the real tools (promtool, amtool):
config and rules are valid, every alert rule has unit tests that pass, the dashboard file is what
the generator writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.services import unavailable

ROOT = Path(__file__).parent.parent


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        unavailable(
            f"{name} not installed (make test installs prometheus and prometheus-alertmanager)"
        )
    return str(found)


def run(*argv: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_checks_the_config_and_rules(tmp_path):
    # The config names container paths; point its rule_files at the repository's copy.
    config = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    config["rule_files"] = [str(ROOT / "prometheus/rules/*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = run(tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS" in out
    out = run(tool("promtool"), "check", "rules", "prometheus/rules/hemostat.yml")
    assert "SUCCESS: 12 rules found" in out


def test_every_rule_has_passing_unit_tests_that_fire_and_stay_quiet():
    out = run(tool("promtool"), "test", "rules", "prometheus/tests/hemostat_test.yml")
    assert "SUCCESS" in out
    rules = yaml.safe_load((ROOT / "prometheus/rules/hemostat.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((ROOT / "prometheus/tests/hemostat_test.yml").read_text())
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert names == fires, f"rules without a firing test: {names - fires}"
    assert names == quiet, f"rules without a stays-quiet test: {names - quiet}"


def test_alertmanager_routes_to_the_monitor_webhook_with_resolutions():
    out = run(tool("amtool"), "check-config", "alertmanager/alertmanager.yml")
    assert "SUCCESS" in out
    config = yaml.safe_load((ROOT / "alertmanager/alertmanager.yml").read_text())
    [receiver] = config["receivers"]
    [hook] = receiver["webhook_configs"]
    assert hook["url"] == "http://monitor:8090/webhook/alertmanager"
    assert hook["send_resolved"] is True
    assert config["route"]["receiver"] == receiver["name"]


def test_grafana_dashboard_is_the_generators_output_and_provisioned():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import grafana_dashboard
    finally:
        sys.path.pop(0)
    committed = (ROOT / "grafana/dashboards/hemostat-overview.json").read_text()
    assert committed == grafana_dashboard.render(), "run: python scripts/grafana_dashboard.py"
    dashboard = json.loads(committed)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "hemostat-prometheus"
            assert p["targets"]
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{p['title']!r} runs past Grafana's 24 columns"
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/hemostat.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["uid"] == "hemostat-prometheus"


@pytest.mark.parametrize("name", ["HemoStatAgentDown", "HemoStatApprovalsWaiting"])
def test_rules_have_human_annotations(name):
    rules = yaml.safe_load((ROOT / "prometheus/rules/hemostat.yml").read_text())
    rule = next(r for g in rules["groups"] for r in g["rules"] if r["alert"] == name)
    assert rule["annotations"]["summary"]
    assert rule["labels"]["severity"] in ("warning", "critical")
