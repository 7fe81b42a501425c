"""The stage types that run in a pod, by the manifest's ``type``: each module defines ``STAGE``, a
class whose ``STAGE(ctx).run()`` returns the ``StageResult``. Modules are imported only when their
stage runs (the rl stage's rollout engines import vLLM). A new stage type is one module here (on
``alignops.workloads.stages.base.Stage`` when it trains on a dataset) and one entry below, beside
its API model in ``alignops.api.stages.STAGE_TYPES``."""

STAGES = {
    "sft": "alignops.workloads.stages.sft",
    "reward": "alignops.workloads.stages.reward",
    "preference": "alignops.workloads.stages.preference",
    "rank": "alignops.workloads.stages.rank",
    "rl": "alignops.workloads.rl.stage",
    "generate": "alignops.workloads.generate.stage",
    "rejection_sampling": "alignops.workloads.stages.rejection_sampling",
    "online_dpo": "alignops.workloads.stages.online_dpo",
    "spin": "alignops.workloads.stages.spin",
}
