"""The Grafana dashboard's structure (its queries are run against a real Prometheus in
test_deploy_prometheus.py): the panels the issue asks for, variables, unique ids, a sane grid."""

from __future__ import annotations

import json
import re

import pytest
from deploy_helpers import DASHBOARD_FILE, tool

DASHBOARD = json.loads(DASHBOARD_FILE.read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def test_required_panels_and_their_series():
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in PANELS}
    required = {
        "Jobs by phase": "alignops_jobs", "Stage timeline": "alignops_stage_info",
        "Stage durations (mean)": "alignops_stage_duration_seconds", "Failures by reason": "alignops_stage_failures_total",
        "Reward per round": "alignops_stage_reward_mean", "Accuracy per round": "alignops_stage_accuracy",
        "KL to reference": "alignops_stage_kl", "Loss": "alignops_stage_loss", "Throughput": "tokens_per_second",
        "Log-prob gap (rollout vs trainer)": "alignops_stage_logprob_gap",
        "Step time per rank": "alignops_stage_rank_step_seconds",
    }
    for title, series in required.items():
        assert series in by_title[title], title
    assert re.search(r"by \([^)]*\breason\b", by_title["Failures by reason"]) and "by (round)" in by_title["Reward per round"]


def test_variables_select_namespace_and_job_by_our_labels():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["query"]["query"].endswith(", aj_namespace)")
    assert variables["job"]["query"]["query"].endswith(", aj_name)") and "$namespace" in variables["job"]["query"]["query"]
    for panel in PANELS:
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            # every per-job query is scoped by both variables, through our labels only
            if "$job" in expr or "$namespace" in expr:
                assert not re.search(r'\b(job|namespace)\s*=', expr), expr
            if "aj_name=" in expr:
                assert expr.count('aj_namespace="$namespace"') == expr.count('aj_name="$job"'), expr


def test_ids_titles_and_grid():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    assert len({p["title"] for p in PANELS}) == len(PANELS)
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["type"] == "row" or panel.get("description"), panel["title"]
    refs = [[t["refId"] for t in p["targets"]] for p in PANELS]
    assert all(len(r) == len(set(r)) for r in refs)
    assert DASHBOARD["uid"] == "alignops" and DASHBOARD["title"] == "AlignOps"


def test_every_query_parses_in_prometheus(tmp_path):
    """promtool parses each query (variables substituted) as a recording rule expression."""
    import subprocess

    import yaml

    rules = []
    for index, panel in enumerate(PANELS):
        for target in panel["targets"]:
            expr = (target["expr"].replace("$namespace", "ml").replace("$job", "demo").replace("$__range", "1h")
                    .replace("$__rate_interval", "1m"))
            rules.append({"record": f"alignops:dashboard_check_{index}_{target['refId'].lower()}", "expr": expr})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([tool("promtool", "/usr/bin/promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_tool_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        tool("alignops-no-such-tool")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        tool("alignops-no-such-tool")
