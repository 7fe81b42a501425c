"""The generate stage: ROUGE-L on known strings, the files a user replaces (checked, errors naming
the file and key), each method's mechanics with a tiny real model and a few prompts (prompts built
from the templates, answers parsed, unparseable ones counted), the dataset commit protocol, and a
generate -> sft pipeline through `alignops run`."""

from __future__ import annotations

import json
import threading
import typing
from collections import Counter
from types import SimpleNamespace

import pytest
import yaml

from alignops.api.common import Architecture, DatasetSource
from alignops.api.generate import GENERATE_METHODS as API_METHODS
from alignops.api.generate import GENERATED_FORMAT, GenerateHyperparameters
from alignops.workloads.context import MetricsSink
from alignops.workloads.data.reading import open_source
from alignops.workloads.data.records import DatasetError
from alignops.workloads.generate.filters import InstructionPool, first_line, first_paragraph
from alignops.workloads.generate.methods import GENERATE_METHODS, GenerationRun, judge_choice
from alignops.workloads.generate.resources import ResourceError, load_principles, load_templates, task_list_prompt
from alignops.workloads.generate.rouge import lcs_length, rouge_l, tokens
from alignops.workloads.generate.sampler import TextSampler
from alignops.workloads.models.build import build_model, build_tokenizer
from alignops.workloads.rollout.hf import TransformersEngine
from suite import run_cli

TOKENIZER = build_tokenizer()


def test_rouge_l_on_known_strings():
    # tokens: lower-cased runs of letters and digits
    assert tokens("Write a HAIKU, please!") == ["write", "a", "haiku", "please"]
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook pair (BCBA)
    # "the cat sat on the mat" vs "the cat lay on the mat": LCS 5 of 6 and 6 -> P = R = F = 5/6
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # 3-token candidate inside a 5-token reference: LCS 3, P = 1, R = 3/5, F = 2 * 0.6 / 1.6 = 0.75
    assert rouge_l("give three tips", "give me three quick tips") == pytest.approx(0.75)
    # demo sums: "12+34=" -> [12, 34]; one shared number: P = R = F = 0.5 (kept at threshold 0.7)
    assert rouge_l("12+34=", "12+35=") == 0.5 and rouge_l("12+34=", "12+34=") == 1.0
    assert rouge_l("", "anything") == 0.0 and rouge_l("a b", "c d") == 0.0


def test_the_pool_drops_near_duplicates_held_out_prompts_and_bad_lengths():
    counts = Counter()
    hp = GenerateHyperparameters.model_validate({"minInstructionChars": 5, "maxInstructionChars": 40})
    pool = InstructionPool(hp, ["Give three tips for staying healthy."], ["Name the largest planet."], counts)
    assert pool.admit("Write a limerick about a cat.")
    assert not pool.admit("Give three tips for staying fit.")    # ROUGE-L 0.83 to the seed
    assert not pool.admit("Write a limerick about a cat!")       # 1.0 to the one just admitted
    assert not pool.admit("Name the largest planet")              # a held-out prompt
    assert not pool.admit("Hi") and not pool.admit("x" * 41) and not pool.admit("")
    assert counts == Counter(droppedSimilar=2, droppedHeldOut=1, droppedLength=2, unparseable=1)


def test_parsers():
    assert first_line("\n  Task one  \nTask two") == "Task one"
    assert first_paragraph("  first part\nsame paragraph\n\nnext") == "first part\nsame paragraph"
    assert [judge_choice(t) for t in ("A) because", "(B)", "b", " A", "Both", "C", "", "Another")] == ["A", "B", "B", "A", None, None, None, None]


def test_the_default_files_load_and_a_bad_template_names_file_and_key(tmp_path):
    templates = load_templates()
    assert task_list_prompt(templates, ["1+2=", "3+4="]) == "Come up with a series of tasks:\nTask: 1+2=\nTask: 3+4=\nTask:"
    assert {p.name for p in load_principles()} >= {"harmless", "honest"}
    broken = yaml.safe_load((__import__("alignops.workloads.generate.resources", fromlist=["DEFAULTS"]).DEFAULTS / "templates.yaml").read_text())
    broken["constitutional"]["critique"] = "Critique {response} please:"  # lacks {instruction} and {critique_request}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ResourceError, match=r"t\.yaml: template 'constitutional.critique' must use the placeholders"):
        load_templates(f"file://{path}")
    path.write_text("- name: x\n  statement: y\n")
    with pytest.raises(ResourceError, match="principle 1 lacks critique, revision, preference"):
        load_principles(f"file://{path}")


class RecordingEngine(TransformersEngine):
    """The transformers engine, remembering every prompt it was given (decoded)."""

    prompts: list[str] = []

    def generate(self, prompts, sampling, seed):
        self.prompts += [TOKENIZER.decode(p, skip_special_tokens=True) for p in prompts]
        return super().generate(prompts, sampling, seed)


def _run(method: str, **settings) -> tuple[list[dict], GenerationRun, list[str]]:
    model = build_model(Architecture.model_validate({"hiddenSize": 16, "layers": 1, "heads": 2, "maxPositions": 512, "seed": 1}), TOKENIZER)
    engine = RecordingEngine(model, TOKENIZER)
    engine.prompts = []
    hp = GenerateHyperparameters.model_validate({"rounds": 1, "promptsPerRound": 3, "samplesPerPrompt": 2, "maxNewTokens": 6,
                                                 "seedTasksPerPrompt": 2, "minInstructionChars": 1, **settings})
    ctx = SimpleNamespace(stop=threading.Event(), metrics=MetricsSink())
    run = GenerationRun(hp, load_templates(), load_principles(), [{"instruction": "Hi?", "response": "Hello."}],
                        ["Name a colour.", "Add 2 and 3.", "Say hi."], ["Name the largest planet."], TextSampler(ctx, engine, TOKENIZER, hp))
    return GENERATE_METHODS.get(method)(run), run, engine.prompts


def test_the_method_names_agree_with_the_registry():
    assert set(API_METHODS) == set(GENERATE_METHODS.names()) == set(GENERATED_FORMAT)
    from alignops.api.stages import GenerateStage
    assert set(typing.get_args(GenerateStage.model_fields["method"].annotation)) == set(API_METHODS)


@pytest.mark.parametrize("method, must_appear", [
    ("self_instruct", ["Come up with a series of tasks:\nTask: "]),
    ("evol_instruct", ["#Given Prompt#:\n"]),
    ("self_align", ["You are a helpful assistant who follows these principles:\n1. Do not help", "User: Hi?\nAssistant: Hello."]),
    ("constitutional", ["\n\nCritique request: ", "\n\nRevision request: "]),
    ("ai_preferences", ["Options:\n(A) ", "The answer is: ("]),
])
def test_each_method_builds_its_prompts_from_the_templates_and_counts_what_it_cannot_parse(method, must_appear):
    records, run, prompts = _run(method)
    for text in must_appear:
        assert any(text in p for p in prompts), (text, prompts[:3])
    keys = {"prompt", "chosen", "rejected"} if GENERATED_FORMAT[method] == "pairs" else {"prompt", "completion"}
    assert all(keys <= set(r) for r in records)
    assert run.counts["rounds"] == 1 and run.sampler.generated_tokens > 0
    assert run.sampler.ctx.metrics.history[0]["total_steps"] == 1  # progress is reported per round
    # every prompt of the round is accounted for: written, or dropped/unparseable with a reason
    dropped = sum(v for k, v in run.counts.items() if k.startswith(("unparseable", "dropped")))
    assert len(records) + dropped >= 1
    if method == "ai_preferences":  # a random tiny judge rarely answers A or B: most are counted
        assert run.counts["judgedA"] + run.counts["judgedB"] + run.counts["unparseableJudgement"] + run.counts["droppedTies"] \
            + run.counts["unparseableResponse"] == 3
    if method == "constitutional":
        assert any(p.critique in q for p in run.principles for q in prompts)


def test_a_dataset_without_its_manifest_is_never_read(tmp_path):
    def read(uri: str) -> list[dict]:
        return open_source(DatasetSource(uri=uri), None, tmp_path / "scratch", "sft").dataset.to_list()

    directory = tmp_path / "gen" / "checkpoint-1"
    directory.mkdir(parents=True)
    (directory / "data.jsonl").write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
    (directory / "generation.json").write_text("{}")  # the stage writes it with the data, before the manifest
    with pytest.raises(DatasetError, match="never committed"):
        read(f"file://{directory}")
    from alignops.storage import commit_checkpoint
    from alignops.storage.open import open_store
    ref = commit_checkpoint(open_store(f"file://{tmp_path}"), directory, "committed", 1)
    assert read(ref.uri) == [{"prompt": "1+1=", "completion": "2"}]
    (tmp_path / "committed" / "checkpoint-1" / "data.jsonl").write_text(json.dumps({"prompt": "1+1=", "completion": "3"}) + "\n")
    with pytest.raises(DatasetError, match="differs from its manifest"):
        read(ref.uri)


def _judge_records(count: int) -> list[dict]:
    """SFT records that teach a tiny judge to answer the judge template with A or B."""
    templates, principles = load_templates(), load_principles()
    records = []
    for i in range(count):
        prompt = templates.render("ai_preferences.judge", instruction=f"Question {i}?", principle=principles[i % len(principles)].preference,
                                  response_a=f"answer {i}", response_b=f"reply {i * 7}")
        records.append({"prompt": prompt, "completion": "AB"[i % 2] + ")"})
    return records


@pytest.mark.slow
def test_constitutional_ai_end_to_end_with_tiny_models(tmp_path):
    """SL-CAI (constitutional -> sft) and RL-CAI (ai_preferences with a judge -> dpo) through
    `alignops run`: every stage succeeds, each generate stage commits its dataset (manifest last) and
    counts what it could not parse. The judge is a tiny model taught the answer format first."""
    judge_data = tmp_path / "judge.jsonl"
    judge_data.write_text("".join(json.dumps(r) + "\n" for r in _judge_records(64)))
    small = {"rounds": 1, "promptsPerRound": 8, "maxNewTokens": 12, "size": 8}
    manifest = {
        "apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "cai"},
        "spec": {"model": {"architecture": {"hiddenSize": 16, "layers": 1, "heads": 2, "maxPositions": 512}},
                 "stages": [
                     {"name": "judge", "type": "sft", "datasets": {"train": {"uri": f"file://{judge_data}"}},
                      "hyperparameters": {"maxSteps": 40, "batchSize": 16, "maxLength": 512, "learningRate": 0.01, "warmupSteps": 0,
                                          "logEvery": 10}},
                     {"name": "sl-cai-data", "type": "generate", "method": "constitutional", "hyperparameters": small},
                     {"name": "sl-cai", "type": "sft", "datasets": {"train": {"fromStage": "sl-cai-data"}},
                      "hyperparameters": {"maxSteps": 2, "batchSize": 4, "maxLength": 256, "logEvery": 1}},
                     {"name": "rl-cai-data", "type": "generate", "method": "ai_preferences", "policy": {"fromStage": "sl-cai"},
                      "judge": {"fromStage": "judge"}, "hyperparameters": small},
                     {"name": "dpo", "type": "preference", "policy": {"fromStage": "sl-cai"},
                      "datasets": {"train": {"fromStage": "rl-cai-data"}},
                      "hyperparameters": {"maxSteps": 2, "batchSize": 4, "maxLength": 256, "logEvery": 1}}]},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    done = run_cli("run", str(path), "--workdir", str(tmp_path / "w"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stages = {s["name"]: s for s in json.loads((tmp_path / "w" / "cai" / "status.json").read_text())["status"]["stages"]}
    assert all(s["phase"] == "Succeeded" for s in stages.values())
    sl, rl = stages["sl-cai-data"]["metrics"], stages["rl-cai-data"]["metrics"]
    assert sl["records"] >= 1 and {"unparseableResponse", "unparseableCritique", "unparseableRevision"} <= set(sl)
    # the taught judge answers in the format; whatever it could not is counted, not written
    assert rl["records"] == rl.get("judgedA", 0) + rl.get("judgedB", 0) >= 1
    assert rl["records"] + rl.get("unparseableJudgement", 0) + rl.get("droppedTies", 0) + rl.get("unparseableResponse", 0) == 8
    for name in ("sl-cai-data", "rl-cai-data"):
        committed = tmp_path / "w" / "default" / "cai" / name / "checkpoint-1"
        assert stages[name]["checkpointUri"] == f"file://{committed}"
        assert sorted(p.name for p in committed.iterdir()) == ["data.jsonl", "generation.json", "manifest.json"]
    pairs = [json.loads(line) for line in (tmp_path / "w" / "default" / "cai" / "rl-cai-data" / "checkpoint-1" / "data.jsonl").read_text().splitlines()]
    assert all(p["chosen"] != p["rejected"] and p["principle"] for p in pairs)
