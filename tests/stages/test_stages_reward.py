"""The reward stage on K-wise rankings: Plackett-Luce by default for rankings, and a checkpoint that
Hugging Face loads as a sequence classifier scoring as the stage did."""

import json
from pathlib import Path

import pytest
import torch

from alignops.contract import EXIT_OK

STAGE = {
    "name": "rm", "type": "reward",
    "datasets": {"train": {"generator": "arithmetic", "size": 16, "seed": 3, "format": "rankings"}},
    "hyperparameters": {"maxSteps": 24, "batchSize": 8, "learningRate": 0.01, "warmupSteps": 2,
                        "checkpointEvery": 1000, "logEvery": 1, "evalSize": 16, "maxLength": 16},
}


@pytest.mark.slow
def test_rankings_train_plackett_luce_and_the_checkpoint_loads_in_transformers(stage_run, tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("ALIGNOPS_METRICS_LOG", str(log))
    code, result = stage_run(STAGE, tmp_path / "store")
    assert code == EXIT_OK
    losses = [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]
    # untrained, four near-equal scores: the Plackett-Luce NLL of a ranking of 4 is log 4! = 3.18
    assert losses[0] == pytest.approx(3.178, abs=0.05)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # 16 rankings, 12 passes: it must fit them

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignops.workloads.data.sft import reward_example
    from alignops.workloads.models.scoring import reward_scores

    directory = Path(result["checkpointUri"].removeprefix("file://"))
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert model.config.architectures == ["LlamaForSequenceClassification"] and model.config.num_labels == 1
    examples = [reward_example("12+30=", answer, tokenizer, 16) for answer in ("42", "41")]
    with torch.no_grad():
        ours = reward_scores(model, examples, tokenizer.pad_token_id)
        # plain HF use: the tokenizer's own batch (bos + text + eos, right-padded) scores the same
        batch = tokenizer(["<s>12+30=42</s>", "<s>12+30=41</s>"], add_special_tokens=False, return_tensors="pt")
        theirs = model(**batch).logits[:, 0]
    assert torch.allclose(ours, theirs, atol=1e-5)

    # the held-out figures after training, recomputed from the checkpoint in plain HF: the 16
    # pairs of the generator's held-out split (evalSize 16, format pairs; chosen is the right sum),
    # accuracy = share with score(chosen) > score(rejected), margin = mean of the differences
    from alignops.demo.arithmetic import generate

    held = generate("pairs", 16, 3, held_out=True)
    texts = [f"<s>{r['prompt']}{r[side]}</s>" for side in ("chosen", "rejected") for r in held]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(**batch).logits[:, 0]
    chosen, rejected = scores[:16], scores[16:]
    metrics = result["metrics"]
    assert metrics["accuracyAfter"] == pytest.approx(float((chosen > rejected).float().mean()), abs=1e-9)
    assert metrics["rewardMarginAfter"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-4)
