"""Runbooks: the shipped set validates; every kind of invalid file is refused naming the file,
the field and the reason; matching picks the most specific runbook."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agents.cli import main as cli_main
from shared.errors import RunbookError
from shared.events import AlertKind, Severity
from shared.runbooks import NOTIFY_ONLY, load_runbook, load_runbooks
from tests.support import factories

RUNBOOKS = Path(__file__).parent.parent / "runbooks"

VALID = """
id: sample
version: 2
match: {kinds: [crash]}
actions:
  - id: restart
    type: restart
  - id: probe
    type: exec
    params: {argv: [/bin/check, --quick]}
default_action: restart
"""


def write(tmp_path: Path, text: str, name: str = "rb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_runbooks_are_valid_and_cover_the_required_cases():
    runbooks = load_runbooks(RUNBOOKS)
    kinds = {k for r in runbooks.items for k in r.match.kinds}
    assert {
        AlertKind.CRASH,
        AlertKind.RESTART_LOOP,
        AlertKind.OOM_KILLED,
        AlertKind.UNHEALTHY,
        AlertKind.HIGH_CPU,
        AlertKind.HIGH_MEMORY,
        AlertKind.EXTERNAL,
    } <= kinds
    catch_all = runbooks.get("alertmanager-catch-all")
    assert [a.type for a in catch_all.actions] == ["none"], (
        "the Alertmanager catch-all only notifies"
    )


def test_a_valid_runbook_loads_typed(tmp_path):
    runbook = load_runbook(write(tmp_path, VALID))
    assert runbook.version == 2
    assert runbook.action("probe").params.argv == ["/bin/check", "--quick"]
    assert runbook.action("restart").params.stop_timeout_s == 10


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("id: [unclosed", "line 1", "invalid YAML"),
        ("- just\n- a list\n", "<root>", "must be a mapping"),
        (VALID.replace("id: sample", "id: Bad Id!"), "id", "should match pattern"),
        (VALID.replace("version: 2", "version: 0"), "version", "greater than or equal to 1"),
        (
            VALID.replace("kinds: [crash]", "kinds: [explosion]"),
            "match.kinds[0]",
            "Input should be",
        ),
        (VALID.replace("match: {kinds: [crash]}", "match: {}"), "match", "at least one of kinds"),
        (
            VALID.replace("type: restart", "type: reboot"),
            "actions[0]",
            "does not match any of the expected tags",
        ),
        (
            VALID.replace("params: {argv: [/bin/check, --quick]}", "params: {argv: []}"),
            "actions[1].params.argv",
            "at least 1 item",
        ),
        (
            VALID.replace("params: {argv: [/bin/check, --quick]}", "params: {}"),
            "actions[1].params.argv",
            "Field required",
        ),
        (
            VALID.replace("default_action: restart", "default_action: nuke"),
            "<root>",
            "'nuke' is not one of the actions",
        ),
        (VALID + "surprise: 1\n", "surprise", "Extra inputs are not permitted"),
        (VALID.replace("id: probe", "id: restart"), "<root>", "duplicate action ids: restart"),
        (
            VALID.replace("    type: restart\n", "    type: restart\n    risk: extreme\n"),
            "actions[0].risk",
            "Input should be",
        ),
    ],
)
def test_invalid_runbooks_name_file_field_and_reason(tmp_path, text, field, reason):
    path = write(tmp_path, text)
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    message = str(caught.value)
    assert str(path) in message
    assert field in message
    assert reason in message


def test_folder_reports_every_broken_file_and_duplicate_ids(tmp_path):
    write(tmp_path, VALID, "a.yaml")
    write(tmp_path, VALID, "b.yaml")
    write(tmp_path, "id: [", "c.yml")
    with pytest.raises(RunbookError) as caught:
        load_runbooks(tmp_path)
    message = str(caught.value)
    assert "b.yaml: id: 'sample' is already defined" in message
    assert "c.yml" in message
    with pytest.raises(RunbookError, match="does not exist"):
        load_runbooks(tmp_path / "missing")


def test_cli_validate(tmp_path, capsys):
    assert cli_main(["runbooks", "validate", str(RUNBOOKS)]) == 0
    assert "7 runbook(s) valid" in capsys.readouterr().out
    write(tmp_path, VALID.replace("default_action: restart", "default_action: nuke"))
    assert cli_main(["runbooks", "validate", str(tmp_path)]) == 1
    assert "nuke" in capsys.readouterr().err


def alert(kind=AlertKind.CRASH, severity=Severity.CRITICAL, **payload):
    event = factories.health_alert(kind=kind, **payload)
    return event.model_copy(update={"severity": severity})


def test_matching_by_kind_severity_labels_and_priority(tmp_path):
    write(tmp_path, VALID, "general.yaml")
    write(
        tmp_path,
        VALID.replace("id: sample", "id: db-only").replace(
            "match: {kinds: [crash]}", "match: {kinds: [crash], labels: {tier: db}}"
        ),
        "db.yaml",
    )
    write(
        tmp_path,
        VALID.replace("id: sample", "id: serious").replace(
            "match: {kinds: [crash]}", "match: {kinds: [oom_killed], min_severity: critical}"
        ),
        "s.yaml",
    )
    runbooks = load_runbooks(tmp_path)
    assert runbooks.match(alert()).id == "sample"
    assert runbooks.match(alert(labels={"tier": "db"})).id == "db-only", (
        "more labels = more specific"
    )
    assert runbooks.match(alert(AlertKind.OOM_KILLED)).id == "serious"
    assert runbooks.match(alert(AlertKind.OOM_KILLED, Severity.WARNING)) is NOTIFY_ONLY
    assert runbooks.match(alert(AlertKind.UNHEALTHY)) is NOTIFY_ONLY, "nothing matched: notify only"


def test_alertnames_match_external_alerts(tmp_path):
    write(tmp_path, VALID.replace("match: {kinds: [crash]}", "match: {alertnames: [DiskFull]}"))
    runbooks = load_runbooks(tmp_path)
    hit = alert(AlertKind.EXTERNAL, alertname="DiskFull")
    miss = alert(AlertKind.EXTERNAL, alertname="Other")
    assert runbooks.match(hit).id == "sample"
    assert runbooks.match(miss) is NOTIFY_ONLY
