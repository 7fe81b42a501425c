"""The Dockerfiles in images/: no Docker engine here, so everything short of building them: the files
they copy exist and pass .dockerignore, the commands they run exist in the package, the extras they
install exist in pyproject.toml, base images and tools are pinned, and they run as a non-root user."""

from __future__ import annotations

import fnmatch
import json
import importlib.util
import re
import shlex
import tomllib

import pytest
from deploy_helpers import CHART, REPO

IMAGES = REPO / "images"
DOCKERFILES = {"operator": IMAGES / "Dockerfile.operator", "trainer": IMAGES / "Dockerfile.trainer",
               "rollout": IMAGES / "Dockerfile.rollout"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    result = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def arg_defaults(steps) -> dict[str, str]:
    defaults = {}
    for keyword, rest in steps:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value
    return defaults


def substitute(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)), text)


def run_commands(steps) -> list[str]:
    return [rest for keyword, rest in steps if keyword == "RUN"]


def pip_installs(steps) -> list[list[str]]:
    """The arguments of every `pip install` (without options)."""
    installs = []
    defaults = arg_defaults(steps)
    for command in run_commands(steps):
        parts, words = [], []
        for word in shlex.split(substitute(command, defaults)):
            if word == "&&":
                parts.append(words)
                words = []
            else:
                words.append(word)
        for words in parts + [words]:
            if words[:2] == ["pip", "install"]:
                args, skip = [], False
                for word in words[2:]:
                    if skip:
                        skip = False
                    elif word in ("--index-url", "--extra-index-url", "-c", "-r"):
                        skip = True
                    elif not word.startswith("-"):
                        args.append(word)
                installs.append(args)
    return installs


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_base_images_are_pinned(image):
    steps = instructions(DOCKERFILES[image])
    defaults = arg_defaults(steps)
    stages = set()
    for keyword, rest in steps:
        if keyword != "FROM":
            continue
        words = substitute(rest, defaults).split()
        reference = words[0]
        if reference not in stages:
            name, _, tag = reference.rpartition(":")
            assert name and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image}: unpinned base {reference}"
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here: the last matching pattern wins, ! re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or fnmatch.fnmatch(path, pattern.replace("**/", "")):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_copied_files_exist_and_reach_the_build_context(image):
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = 0
    for keyword, rest in instructions(DOCKERFILES[image]):
        if keyword not in ("COPY", "ADD") or "--from=" in rest:
            continue
        *sources, _destination = [w for w in rest.split() if not w.startswith("--")]
        for source in sources:
            path = REPO / source
            assert path.exists(), f"{image}: COPY {source}: no such file in the repository"
            assert not _ignored(source.rstrip("/"), patterns), f"{image}: {source} is excluded by .dockerignore"
            copied += 1
    assert copied >= 3  # pyproject.toml, README.md, operator/


def test_dockerignore_keeps_the_virtualenv_and_tests_out():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv", "tests", "charts", "runs", ".git"):
        assert _ignored(path, patterns), path
    assert _ignored("operator/alignops/__pycache__", patterns)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_runs_as_a_non_root_user(image):
    users = [rest for keyword, rest in instructions(DOCKERFILES[image]) if keyword == "USER"]
    assert users, f"{image}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, f"{image}: USER {users[-1]} (numeric, >= 10000, matches runAsUser)"
    assert any(f"--uid {uid}" in command for command in run_commands(instructions(DOCKERFILES[image])))


def test_operator_uid_matches_the_chart():
    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    users = [rest for keyword, rest in instructions(DOCKERFILES["operator"]) if keyword == "USER"]
    assert users[-1] == f"{values['runAsUser']}:{values['runAsUser']}"


def _command(image) -> list[str]:
    steps = instructions(DOCKERFILES[image])
    entry = [json.loads(rest) for keyword, rest in steps if keyword == "ENTRYPOINT"]
    cmd = [json.loads(rest) for keyword, rest in steps if keyword == "CMD"]
    return (entry[-1] if entry else []) + (cmd[-1] if cmd else [])


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_entrypoints_exist_in_the_package(image):
    command = _command(image)
    assert command, f"{image}: neither ENTRYPOINT nor CMD"
    if command[0] == "alignops":
        target = PYPROJECT["project"]["scripts"]["alignops"]
        module, _, attribute = target.partition(":")
        app = getattr(importlib.import_module(module), attribute)
        if len(command) > 1:
            names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
            names |= {g.name for g in app.registered_groups}
            assert command[1] in names, f"`alignops {command[1]}` is not a command of {target} (has: {sorted(names)})"
    else:
        assert command[:2] == ["python", "-m"], command
        spec = importlib.util.find_spec(command[2] + ".__main__")
        assert spec is not None and spec.origin.startswith(str(REPO / "operator")), command



def test_chart_operator_command_is_the_image_command():
    """The chart runs `alignops operator`: the operator image's ENTRYPOINT + CMD."""
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert 'command: ["alignops", "operator"]' in deployment
    assert _command("operator") == ["alignops", "operator"]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_installed_extras_exist_and_tools_are_pinned(image):
    extras = PYPROJECT["project"]["optional-dependencies"]
    installs = pip_installs(instructions(DOCKERFILES[image]))
    assert installs
    for args in installs:
        for requirement in args:
            local = re.fullmatch(r"\.(\[([\w,-]+)\])?", requirement)
            if local:
                for extra in filter(None, (local.group(2) or "").split(",")):
                    assert extra in extras, f"{image}: extra [{extra}] is not in pyproject.toml ({sorted(extras)})"
            elif requirement.startswith("/wheels/"):
                assert requirement.endswith(".whl")
            else:
                assert re.fullmatch(r"[\w.-]+==[\w.]+", requirement), f"{image}: unpinned {requirement}"


def _installed_extras(image) -> set[str]:
    found = set()
    for args in pip_installs(instructions(DOCKERFILES[image])):
        for requirement in args:
            match = re.fullmatch(r"\.\[([\w,-]+)\]", requirement)
            if match:
                found |= set(match.group(1).split(","))
    return found


def test_operator_image_has_no_torch():
    text = DOCKERFILES["operator"].read_text()
    assert _installed_extras("operator") == set()
    assert not re.search(r"\btorch\b", " ".join(run_commands(instructions(DOCKERFILES["operator"]))))
    base = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    for heavy in ("torch", "transformers", "vllm", "deepspeed"):
        assert heavy not in base, f"`pip install .` would pull {heavy} into the operator image"
    assert "pip install --no-cache-dir /wheels/alignops-" in text


def test_trainer_image_installs_cuda_torch_train_deepspeed_and_liger():
    assert _installed_extras("trainer") == {"train", "deepspeed", "gpu"}
    installs = pip_installs(instructions(DOCKERFILES["trainer"]))
    torch_pins = [r for args in installs for r in args if r.startswith("torch==")]
    assert len(torch_pins) == 1
    text = DOCKERFILES["trainer"].read_text()
    assert re.search(r"TORCH_INDEX=https://download\.pytorch\.org/whl/cu\d+", text)
    assert "vllm" not in text.lower()


def test_rollout_image_lets_vllm_pin_its_torch():
    assert _installed_extras("rollout") == {"rollout"}
    installs = pip_installs(instructions(DOCKERFILES["rollout"]))
    requirements = [r for args in installs for r in args]
    assert any(r.startswith("vllm==") for r in requirements)
    assert not any(r.startswith("torch") for r in requirements), "the rollout image must take vLLM's torch pin"
    assert "vllm" in " ".join(PYPROJECT["project"]["optional-dependencies"]["rollout"])
    assert "torch" not in " ".join(PYPROJECT["project"]["optional-dependencies"]["rollout"])


def test_chart_default_stage_images_follow_the_app_version():
    import yaml

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["stages"]["trainerImage"].endswith(":" + chart["appVersion"])
    assert values["stages"]["rolloutImage"].endswith(":" + chart["appVersion"])
    assert chart["appVersion"] == PYPROJECT["project"]["version"]
