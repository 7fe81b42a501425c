"""The alerts, with Prometheus's own promtool: the rules file and the chart's rendered PrometheusRule
pass `promtool check rules`; `promtool test rules` runs cases that fire and do not fire each alert."""

from __future__ import annotations

import re
import subprocess

import yaml
from deploy_helpers import COMBINATIONS, HERE, RULES_FILE, documents, one, render, tool

TESTS_FILE = HERE / "alignops_alerts_test.yaml"
EXPECTED_ALERTS = {"AlignOpsJobFailed", "AlignOpsRetriesExhausted", "AlignOpsOperatorDown", "AlignOpsStageStalled",
                   "AlignOpsLogprobGapHigh", "AlignOpsRewardCollapse"}


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool", "/usr/bin/promtool"), *args], capture_output=True, text=True, timeout=120)


def _alerts(groups: dict) -> dict[str, dict]:
    return {rule["alert"]: rule for group in groups["groups"] for rule in group["rules"] if "alert" in rule}


def test_rules_file_and_rendered_prometheus_rule_pass_promtool_check(tmp_path):
    result = _promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout
    rule = one(documents(render(COMBINATIONS["monitoring"])), "PrometheusRule")
    rendered = tmp_path / "rendered.rules.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    result = _promtool("check", "rules", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_are_the_ones_promised():
    alerts = _alerts(yaml.safe_load(RULES_FILE.read_text()))
    assert set(alerts) == EXPECTED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_alert_series_are_in_the_name_table():
    from alignops.metrics import names

    for name, rule in _alerts(yaml.safe_load(RULES_FILE.read_text())).items():
        series = set(re.findall(r"\balignops_[a-z_]+\b", rule["expr"]))
        assert series <= names.all_names() and (series or name == "AlignOpsOperatorDown"), (name, series - names.all_names())
        # our own series are matched and grouped by aj_namespace / aj_name, never job / namespace
        labels = set(re.findall(r"\b([a-z_]+)\s*(?:=~|!=|=)", rule["expr"])) | \
            {label.strip() for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"]) for label in group.split(",")}
        assert "namespace" not in labels and ("job" not in labels or name == "AlignOpsOperatorDown"), (name, labels)


def test_promtool_unit_tests_pass_and_cover_each_alert_both_ways():
    result = _promtool("test", "rules", str(TESTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    fires, silent = set(), set()
    for case in yaml.safe_load(TESTS_FILE.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert fires == EXPECTED_ALERTS and silent == EXPECTED_ALERTS


def test_promtool_unit_tests_catch_a_changed_threshold(tmp_path):
    """The cases pin the thresholds: moving the log-prob gap threshold from 0.1 to 0.5 (the stale
    case sits at 0.35) fails the suite."""
    text = RULES_FILE.read_text()
    assert "(alignops_stage_logprob_gap) > 0.1" in text
    rules = tmp_path / "rules.yaml"
    rules.write_text(text.replace("(alignops_stage_logprob_gap) > 0.1", "(alignops_stage_logprob_gap) > 0.5"))
    cases = yaml.safe_load(TESTS_FILE.read_text())
    cases["rule_files"] = [str(rules)]
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump(cases))
    result = _promtool("test", "rules", str(tests))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "AlignOpsLogprobGapHigh" in result.stdout + result.stderr
