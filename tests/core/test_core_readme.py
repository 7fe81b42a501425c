"""The README's two commands are the ones users and CI run."""

from __future__ import annotations

import re
from pathlib import Path

from suite import REPO


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_has_an_install_and_run_command_and_a_test_command():
    commands = _readme_commands()
    assert len(commands) >= 2
    assert commands[0].endswith("alignops run pipelines/quickstart.yaml")
    assert "pytest" in commands[1] and "torch==2.13.0" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [_readme_commands()[1]]


def test_every_path_in_the_layout_table_exists():
    """The README's layout table names real paths (``…/workloads/x`` is under operator/alignops)."""
    section = (REPO / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 10
    for row in rows:
        cell = row.split("|")[1]
        names = re.findall(r"`([^`]+)`", cell)
        parent = None
        for name in names:
            if name.startswith("…/"):
                name = "operator/alignops/" + name[2:]
            elif "/" not in name.rstrip("/") and parent is not None:
                name = f"{parent}/{name}"  # `data`, `models` after `…/workloads/data`
            path = REPO / name.rstrip("/")
            assert path.exists(), f"README layout names {name}, which does not exist"
            parent = str(Path(name.rstrip("/")).parent)
