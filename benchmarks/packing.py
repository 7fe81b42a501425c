"""Tokens per second of SFT with and without packing, on a dataset of mixed lengths (most examples
short, a few long, as instruction data is), and the check that both compute the same loss.

One epoch over the same examples each way, forward and backward through a small Llama built in
code (the demo's character tokenizer): unpacked, ``--batch-size`` examples per micro-batch padded to
the longest; packed, ``--batch-size`` rows of at most ``--max-length`` tokens (best-fit
decreasing), positions restarting per example. Throughput counts real (non-padding) tokens.

    python benchmarks/packing.py                       # prints a table
    python benchmarks/packing.py --examples 256 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from alignops.algos import next_token_logprobs  # noqa: E402
from alignops.algos.sft import masked_lm_loss  # noqa: E402
from alignops.api.common import Architecture  # noqa: E402
from alignops.workloads.data.batching import sft_batch  # noqa: E402
from alignops.workloads.data.packing import pack_bfd, packed_batch, packed_logits  # noqa: E402
from alignops.workloads.data.sft import tokenize_sft  # noqa: E402
from alignops.workloads.models.build import build_model, build_tokenizer  # noqa: E402

WORDS = "the of and to in is that for it as with was on be by at this are from or have an not".split()


def mixed_examples(count: int, max_length: int, tokenizer, seed: int):
    """Prompt and completion lengths from a log-normal (median about a tenth of maxLength)."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        length = min(max_length, max(8, int(rng.lognormvariate(0, 0.9) * max_length / 10)))
        text = " ".join(rng.choice(WORDS) for _ in range(length))[:length]
        cut = rng.randint(1, max(1, length // 2))
        examples.append(tokenize_sft({"prompt": text[:cut], "completion": text[cut:]}, tokenizer, max_length))
    return examples


def epoch(model, batches, step, optimizer) -> tuple[float, int, float]:
    """(seconds, real tokens, loss sum) of one pass over ``batches``."""
    tokens, loss_sum = 0, 0.0
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad()
        loss, n = step(model, batch)
        loss.backward()
        optimizer.step()
        tokens += n
        loss_sum += loss.item()
    return time.perf_counter() - start, tokens, loss_sum


def unpacked_step(pad):
    def step(model, examples):
        ids, labels, attention = sft_batch(examples, pad, "cpu")
        logits = model(input_ids=ids, attention_mask=attention).logits
        return masked_lm_loss(logits.float(), labels), int(attention.sum())
    return step


def packed_step(pad):
    def step(model, rows):
        ids, labels, positions = packed_batch(rows, pad, "cpu")
        logits = packed_logits(model, ids, positions)
        return masked_lm_loss(logits.float(), labels), sum(len(e.input_ids) for row in rows for e in row)
    return step


def same_loss(model, examples, pad, max_length) -> float:
    """Largest per-token log-prob difference between packed and unpacked (fp32, no grad)."""
    with torch.no_grad():
        ids, labels, attention = sft_batch(examples, pad, "cpu")
        logps, mask = next_token_logprobs(model(input_ids=ids, attention_mask=attention).logits, labels)
        expected = torch.cat([logps[i][mask[i]] for i in range(len(examples))])
        rows = [[examples[i] for i in row] for row in pack_bfd([len(e.input_ids) for e in examples], max_length)]
        order = [e for row in rows for e in row]
        pids, plabels, positions = packed_batch(rows, pad, "cpu")
        plogps, pmask = next_token_logprobs(packed_logits(model, pids, positions), plabels)
        got = plogps[pmask]
        index = {id(e): i for i, e in enumerate(examples)}
        ranges, at = {}, 0
        for e in order:  # packed token log-probs come in row order; put them back in example order
            n = int((torch.tensor(e.labels[1:]) != -100).sum())
            ranges[index[id(e)]] = got[at : at + n]
            at += n
        reordered = torch.cat([ranges[i] for i in range(len(examples))])
    return float((expected - reordered).abs().max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("ALIGNOPS_CPU_THREADS", "1")))
    tokenizer = build_tokenizer()
    pad = tokenizer.pad_token_id
    examples = mixed_examples(args.examples, args.max_length, tokenizer, args.seed)
    arch = Architecture.model_validate({"hiddenSize": args.hidden, "layers": args.layers, "heads": 4,
                                        "maxPositions": args.max_length, "seed": args.seed})
    model = build_model(arch, tokenizer)
    model.set_attn_implementation(args.attention)
    gap = same_loss(model.eval(), examples[:32], pad, args.max_length)
    model.train()
    rng = random.Random(args.seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    unpacked = [[examples[i] for i in order[s : s + args.batch_size]] for s in range(0, len(order), args.batch_size)]
    rows = pack_bfd([len(e.input_ids) for e in examples], args.max_length)
    rng.shuffle(rows)
    packed_rows = [[examples[i] for i in row] for row in rows]
    packed = [packed_rows[s : s + args.batch_size] for s in range(0, len(packed_rows), args.batch_size)]
    lengths = [len(e.input_ids) for e in examples]
    real = sum(lengths)
    computed_unpacked = sum(len(b) * max(len(e.input_ids) for e in b) for b in unpacked)
    computed_packed = sum(len(b) * max(sum(len(e.input_ids) for e in row) for row in b) for b in packed)
    results = {}
    for name, batches, step in (("unpacked", unpacked, unpacked_step(pad)), ("packed", packed, packed_step(pad))):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        times = []
        for _ in range(args.repeats):
            seconds, tokens, _ = epoch(model, batches, step, optimizer)
            times.append(seconds)
            model.load_state_dict(state)
        results[name] = (statistics.median(times), len(batches))
    print(f"{args.examples} examples, lengths median {int(statistics.median(lengths))}, max {max(lengths)} tokens; "
          f"maxLength {args.max_length}, batch {args.batch_size}, Llama {args.layers}x{args.hidden} ({args.attention}), "
          f"{torch.get_num_threads()} CPU thread(s), median of {args.repeats} epochs")
    print(f"{'':10s} {'steps':>6s} {'computed tokens':>16s} {'padding':>8s} {'epoch s':>8s} {'real tokens/s':>14s}")
    for name, computed in (("unpacked", computed_unpacked), ("packed", computed_packed)):
        seconds, steps = results[name]
        print(f"{name:10s} {steps:6d} {computed:16d} {1 - real / computed:8.1%} {seconds:8.2f} {real / seconds:14.0f}")
    print(f"speed-up {results['unpacked'][0] / results['packed'][0]:.2f}x; "
          f"largest per-token log-prob gap packed vs unpacked (fp32): {gap:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
