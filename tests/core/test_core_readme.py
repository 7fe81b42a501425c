"""The README's two commands are the ones users and CI run."""

from __future__ import annotations

import re

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
