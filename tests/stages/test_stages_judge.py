"""The LLM judge's mechanics: the prompt built from the template (through the tokenizer's chat
template), verdicts parsed from hand-written answers, unparseable and inconsistent answers counted
and their pairs left undecided, and a judge model loaded from a Hugging Face cache by hub id."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from alignops.api.judge import DEFAULT_ANSWER_PATTERN, JudgeSpec
from alignops.workloads.judge import JudgeScorer, LlmJudge, consecutive_pairs, fill_template, parse_verdict
from alignops.workloads.models.build import build_tokenizer
from alignops.workloads.rl.rewards import ScoringBatch

DEFAULT = re.compile(DEFAULT_ANSWER_PATTERN)


@pytest.mark.parametrize("answer, verdict", [
    ("A", 0), ("B", 1), (" B.", 1), ("\nA\n", 0), ("**B**", 1), ("(A)", 0),
    ("Response A", 0), ("Response B is better.", 1),
    # no verdict: another letter, lower case (the article "a"), the letter not first, nothing
    ("C", None), ("a", None), ("I prefer B", None), ("", None), ("AB", None), ("2", None),
])
def test_default_pattern_reads_the_first_word(answer, verdict):
    assert parse_verdict(answer, DEFAULT) == verdict


def test_a_custom_pattern_may_capture_1_or_2():
    pattern = re.compile(r"Preferred:\s*(\w+)")
    assert parse_verdict("Reasoning... Preferred: 2", pattern) == 1
    assert parse_verdict("Preferred: 1", pattern) == 0
    assert parse_verdict("Preferred: b", pattern) == 1  # the captured label is upper-cased
    assert parse_verdict("Preferred: 3", pattern) is None
    assert parse_verdict("no verdict here", pattern) is None


def test_template_placeholders_are_filled_once_and_other_braces_kept():
    template = 'Q: {prompt} | 1: {response_a} | 2: {response_b} | json: {"x": {prompt_id}}'
    filled = fill_template(template, prompt="2+2={response_b}", response_a="4", response_b="5")
    # the prompt's own "{response_b}" is text, not a placeholder; unknown braces stay
    assert filled == 'Q: 2+2={response_b} | 1: 4 | 2: 5 | json: {"x": {prompt_id}}'


def test_the_spec_refuses_a_template_without_placeholders_and_a_pattern_without_a_group():
    with pytest.raises(ValueError, match=r"\{response_b\}"):
        JudgeSpec.model_validate({"fromStage": "sft", "template": "{prompt} {response_a}"})
    with pytest.raises(ValueError, match="needs a group"):
        JudgeSpec.model_validate({"fromStage": "sft", "answerPattern": "[AB]"})
    with pytest.raises(ValueError, match="exactly one of fromStage, uri or hub"):
        JudgeSpec.model_validate({"fromStage": "sft", "hub": "org/judge"})
    with pytest.raises(ValueError, match="revision applies to hub only"):
        JudgeSpec.model_validate({"fromStage": "sft", "revision": "main"})
    assert JudgeSpec.model_validate({"hub": "org/judge", "revision": "v1"}).location == "hf://org/judge@v1"


class ScriptedJudge(LlmJudge):
    """An LlmJudge whose model is a script: the answer to each judge prompt is looked up by the
    (response A, response B) it shows."""

    def __init__(self, spec: JudgeSpec, script: dict[tuple[str, str], str]):
        super().__init__(None, build_tokenizer(), spec)
        self.script, self.prompts = script, []

    def answers(self, texts: list[str]) -> list[str]:
        self.prompts += texts
        return [self.script[tuple(re.search(r"A=(.*) B=(.*)\n", t).groups())] for t in texts]


SPEC = {"fromStage": "judge", "template": "Q={prompt} A={response_a} B={response_b}"}


def scoring_batch(responses: list[str], groups: list[int]) -> ScoringBatch:
    return ScoringBatch(prompts=[f"p{g}" for g in groups], responses=responses, answers=[None] * len(groups),
                        lengths=torch.ones(len(groups)), group_ids=torch.tensor(groups), max_new_tokens=4)


def test_responses_of_a_prompt_are_judged_in_consecutive_pairs():
    # group 0 has rows 0, 1, 3, 5 (interleaved with group 1's rows 2, 4, 6): pairs 0-1, 3-5; then 2-4; 6 is left over
    assert consecutive_pairs([0, 0, 1, 0, 1, 0, 1]) == [(0, 1), (3, 5), (2, 4)]


def test_scorer_scores_winners_1_and_counts_pairs_it_cannot_decide():
    judge = ScriptedJudge(JudgeSpec.model_validate(SPEC), {("r0", "r1"): "A", ("r2", "r3"): "Both are fine", ("r4", "r5"): " B"})
    scorer = JudgeScorer(judge)
    score, parts = scorer(scoring_batch(["r0", "r1", "r2", "r3", "r4", "r5", "r6"], [0, 0, 0, 0, 1, 1, 1]))
    # pair r0-r1: A wins; r2-r3: unparseable, a tie; r4-r5: B wins; r6: no partner
    assert score.tolist() == [1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.5]
    assert parts["judge_unparsed"].tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert parts["judge_inconsistent"].tolist() == [0] * 7
    # the judge saw the template filled in, as a user turn of the tokenizer's chat template
    assert judge.prompts[0] == "<|user|>Q=p0 A=r0 B=r1\n<|assistant|>"
    assert [j.as_record()["winner"] for j in scorer.judgements] == ["A", None, "B"]


def test_both_orders_keeps_only_pairs_whose_answers_agree():
    script = {("r0", "r1"): "A", ("r1", "r0"): "B",      # consistent: r0 wins both ways
              ("r2", "r3"): "A", ("r3", "r2"): "A",      # position bias: inconsistent
              ("r4", "r5"): "B", ("r5", "r4"): "maybe"}  # the swapped answer does not parse
    judge = ScriptedJudge(JudgeSpec.model_validate({**SPEC, "bothOrders": True}), script)
    score, parts = JudgeScorer(judge)(scoring_batch(["r0", "r1", "r2", "r3", "r4", "r5"], [0, 0, 1, 1, 2, 2]))
    assert score.tolist() == [1.0, 0.0, 0.5, 0.5, 0.5, 0.5]
    assert parts["judge_inconsistent"].tolist() == [0, 0, 1, 1, 0, 0]
    assert parts["judge_unparsed"].tolist() == [0, 0, 0, 0, 1, 1]
    assert len(judge.prompts) == 6  # every pair asked twice


_LOAD_FROM_HUB_CACHE = """
import json, sys, types
from alignops.workloads.context import ConfigError, RunContext
from alignops.workloads.judge import load_judge
for uri in sys.argv[1:]:
    # a run context holding only what a Hub input needs: no store, one process
    ctx = RunContext(config=types.SimpleNamespace(inputs=types.SimpleNamespace(judge=uri),
                                                  base_model=types.SimpleNamespace(trust_remote_code=False, chat_template=None)),
                     store=None, scratch=None, metrics=None)
    try:
        model, tokenizer = load_judge(ctx)
        print(json.dumps({"layers": model.config.num_hidden_layers, "pad": tokenizer.pad_token}))
    except ConfigError as exc:
        print(json.dumps({"error": str(exc)}))
"""


@pytest.mark.slow
def test_a_hub_judge_loads_from_the_hugging_face_cache_offline(tmp_path):
    """``judge.hub`` reads ``HF_HOME/hub/models--ORG--NAME/snapshots/<revision>/`` (the revision in
    ``refs/main``) with downloads off; a model not in the cache is a configuration error."""
    from alignops.api.common import Architecture
    from alignops.workloads.models.build import build_model

    tokenizer = build_tokenizer()
    snapshot = tmp_path / "hub" / "models--acme--tiny-judge" / "snapshots" / "0123abcd"
    build_model(Architecture.model_validate({"hiddenSize": 16, "layers": 1, "heads": 2}), tokenizer).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    # a fresh interpreter: huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_LOAD_FROM_HUB_CACHE), "hf://acme/tiny-judge", "hf://acme/absent"],
                          capture_output=True, text=True, env={**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found, missing = [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]]
    assert found == {"layers": 1, "pad": "<pad>"}
    assert "not in the Hub cache" in missing["error"] and "HF_HUB_OFFLINE" in missing["error"]
