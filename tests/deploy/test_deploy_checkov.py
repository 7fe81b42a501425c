"""checkov's Kubernetes checks on the rendered chart: nothing fails, and each skipped check is
skipped in the chart itself with a written reason."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from deploy_helpers import COMBINATIONS, documents, render, tool

SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")


def _write(tmp_path: Path, docs_by_name: dict[str, list[dict]]) -> Path:
    for name, docs in docs_by_name.items():
        directory = tmp_path / name
        directory.mkdir()
        for index, doc in enumerate(docs):
            (directory / f"{index:02d}-{doc['kind']}.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def _checkov(directory: Path) -> dict:
    executable = tool("checkov", str(Path(sys.executable).parent / "checkov"))
    result = subprocess.run([executable, "-d", str(directory), "--framework", "kubernetes", "-o", "json",
                             "--skip-download"], capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def _skips(doc: dict) -> dict[str, str]:
    annotations = doc["metadata"].get("annotations") or {}
    skips = {}
    for key, value in annotations.items():
        if SKIP_ANNOTATION.match(key):
            check, _, reason = value.partition("=")
            skips[check] = reason
    return skips


def test_checkov_passes_the_rendered_chart(tmp_path):
    docs_by_name = {name: documents(render(values)) for name, values in COMBINATIONS.items()}
    report = _checkov(_write(tmp_path, docs_by_name))
    failed = [(c["check_id"], c["check_name"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 100 and report["summary"]["parsing_errors"] == 0
    # every skip is written in the chart, with a reason of at least a few words
    annotated = {}
    for docs in docs_by_name.values():
        for doc in docs:
            for check, reason in _skips(doc).items():
                assert len(reason.split()) >= 5, f"{check}: the reason is too short: {reason!r}"
                annotated.setdefault(check, reason)
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped and skipped <= set(annotated)


def test_the_skipped_checks_fail_without_their_annotations(tmp_path):
    """The skips are not decoration: without them checkov fails exactly those checks."""
    docs = documents(render())
    skips = {}
    for doc in docs:
        skips.update(_skips(doc))
        annotations = doc["metadata"].get("annotations") or {}
        for key in [k for k in annotations if SKIP_ANNOTATION.match(k)]:
            del annotations[key]
    report = _checkov(_write(tmp_path, {"stripped": docs}))
    assert {c["check_id"] for c in report["results"]["failed_checks"]} == set(skips)
