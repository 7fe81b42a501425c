import ast
import pathlib

import pytest

import alignops.algos as algos
from alignops.algos import PREFERENCE_LOSSES, Registry, UnknownNameError


def test_register_get_names():
    reg = Registry("widget")

    @reg.register("b")
    def b():
        return "B"

    @reg.register("a")
    def a():
        return "A"

    assert reg.get("a") is a and reg.get("b")() == "B"
    assert reg.names() == ("a", "b")  # sorted, not insertion order
    assert "a" in reg and "c" not in reg and len(reg) == 2


def test_duplicate_registration_is_refused():
    reg = Registry("widget")
    reg.register("x")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(lambda: 2)


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        PREFERENCE_LOSSES.get("dpoo")
    assert str(info.value) == "unknown preference loss 'dpoo'; known: cdpo, dpo, ipo, kto, orpo, simpo"
    # Catchable both as a bad config value and as a failed lookup.
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    assert info.value.known == ("cdpo", "dpo", "ipo", "kto", "orpo", "simpo")


def test_registries_hold_the_documented_names():
    assert algos.REWARD_LOSSES.names() == ("bradley_terry", "plackett_luce")
    assert algos.ADVANTAGE_ESTIMATORS.names() == (
        "dr_grpo", "gae", "grpo", "reinforce_pp", "reinforce_pp_baseline", "remax", "rloo",
    )
    assert algos.KL_ESTIMATORS.names() == ("k1", "k2", "k3")
    assert algos.AGGREGATION_MODES.names() == (
        "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_mean",
    )


def test_public_api_is_exported():
    for name in algos.__all__:
        assert hasattr(algos, name), name


def test_algos_imports_only_torch_and_stdlib():
    # The package must stay importable without transformers/kopf/numpy installed by us.
    allowed = {"torch", "__future__", "typing", "dataclasses", "math"}
    pkg = pathlib.Path(algos.__file__).parent
    offenders = []
    for path in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            offenders += [f"{path.name}: {r}" for r in roots if r not in allowed]
    assert offenders == []


def test_every_preference_loss_carries_its_traits():
    # what the preference stage reads instead of branching on names (docs/algorithms.md)
    traits = {name: algos.PREFERENCE_LOSSES.traits(name) for name in algos.PREFERENCE_LOSSES}
    assert {n for n, t in traits.items() if not t.needs_reference} == {"simpo", "orpo"}
    assert {n for n, t in traits.items() if not t.paired} == {"kto"}
    assert {n for n, t in traits.items() if t.adds_nll} == {"orpo"}
    assert {n for n, t in traits.items() if t.length_normalised} == {"simpo", "orpo"}
    assert algos.REWARD_LOSSES.traits("plackett_luce").whole_rankings
    assert not algos.REWARD_LOSSES.traits("bradley_terry").whole_rankings
    with pytest.raises(algos.UnknownNameError, match="known: cdpo, dpo"):
        algos.PREFERENCE_LOSSES.traits("dpoo")


def test_stages_never_branch_on_an_algorithm_name():
    stages = pathlib.Path(algos.__file__).parents[1] / "workloads" / "stages"
    names = set(algos.PREFERENCE_LOSSES) | set(algos.REWARD_LOSSES) | set(algos.RANKING_LOSSES)
    for path in stages.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
                assert not constants & names, f"{path.name}:{node.lineno} compares with an algorithm name"
