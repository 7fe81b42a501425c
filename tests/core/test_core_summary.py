"""``summary.json`` in storage: each stage run updates its entry; a rerun from its inputs (a new
stage key) starts its entry afresh and clears the stages after it, so no result of an older spec
stays in it."""

from __future__ import annotations

from alignops.api import parse_job
from alignops.planner import Defaults, initial_status, resolve_run
from alignops.workloads.summary import update_summary
from core.manifests import two_sft_job

DEFAULTS = Defaults(storage_uri="file:///data")


def test_a_rerun_starts_its_entry_afresh_and_clears_the_stages_after_it():
    job = parse_job(two_sft_job())
    status = initial_status(job)
    first, second = (resolve_run(job, status, name, 1, DEFAULTS) for name in ("sft", "sft2"))
    summary = update_summary({}, first, 0, "file:///data/default/demo/sft/checkpoint-4", {"loss": 1.0, "old": 2.0}, None, 0, 1)
    summary = update_summary(summary, second, 0, "file:///data/default/demo/sft2/checkpoint-4", {"loss": 0.9}, None, 1, 2)
    assert summary["stages"]["sft2"]["phase"] == "Succeeded"
    resumed = update_summary(summary, first, 0, None, {"loss": 0.5}, None, 2, 3)  # same key: merged
    assert resumed["stages"]["sft"]["metrics"] == {"loss": 0.5, "old": 2.0}

    status.stages[0].rerun = 1
    rerun = resolve_run(job, status, "sft", 2, DEFAULTS)
    assert rerun.stage_key == "default/demo/sft/rerun-1"
    after = update_summary(summary, rerun, 0, "file:///data/default/demo/sft/rerun-1/checkpoint-4", {"loss": 0.7}, None, 3, 4)
    assert after["stages"]["sft"]["metrics"] == {"loss": 0.7}
    assert after["stages"]["sft"]["checkpointUri"].endswith("sft/rerun-1/checkpoint-4")
    assert after["stages"]["sft2"] == {"phase": "Pending"}
