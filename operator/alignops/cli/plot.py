"""``alignops plot``: loss, reward and accuracy curves of a local run, one panel per metric."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = (("loss", "loss"), ("reward_mean", "reward (mean)"), ("accuracy", "held-out accuracy"), ("kl", "KL to reference"))


def read_metrics(job_dir: Path) -> dict[str, list[dict]]:
    runs = {}
    for path in sorted(Path(job_dir).glob("*/metrics.jsonl")):
        runs[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return runs


def plot_job(job_dir: Path, output: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = read_metrics(job_dir)
    if not runs:
        raise FileNotFoundError(f"no */metrics.jsonl under {job_dir}: is it the <workdir>/<job> of a run?")
    panels = [(key, label) for key, label in PANELS if any(key in r for records in runs.values() for r in records)]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (key, label) in zip(axes[0], panels):
        for stage, records in runs.items():
            points = [(r.get("step", i), r[key]) for i, r in enumerate(records) if isinstance(r.get(key), (int, float))]
            if points:
                axis.plot(*zip(*points), label=stage, marker="." if len(points) < 30 else None)
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(Path(job_dir).name)
    figure.tight_layout()
    output = Path(output or Path(job_dir) / "metrics.png")
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
