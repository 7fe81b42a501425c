"""Training speed on one GPU, side by side: a plain PyTorch loop, AlignOps and TRL (a benchmark, not
a test; ``--tiny`` runs it on the CPU at a tiny size, the CI smoke test).

Rows, in priority order (the run stops starting rows once ``--budget-seconds``, default 480, is
spent, so it ends within about 8 minutes):

1. SFT on a random-initialised Qwen2.5-0.5B shape (``Qwen2Config`` with its real sizes, vocabulary
   151,936) at 1024 and 4096 tokens per sequence: the plain loop (bf16 autocast, fused AdamW,
   ``model(labels=...).loss``), AlignOps (the real ``SftStage`` through ``TrainLoop``, ZeRO-0, its
   defaults: chunked/fused log-probs, no activation checkpointing) and TRL's ``SFTTrainer`` with its
   defaults (activation checkpointing on);
2. DPO at 1024 tokens: AlignOps' ``preference`` stage against TRL's ``DPOTrainer`` (defaults);
3. ZeRO-3 rows: a hook (``zero3_row``) the DeepSpeed engine fills in once it lands;
4. if time remains: the 1.5B shape, and activation checkpointing switched the other way (TRL off,
   AlignOps on).

Every row trains ``--warmup`` + ``--steps`` optimiser steps on ``--tokens-per-step`` tokens (the
sequences per step follow from the length); tokens/s is timed over the steps after the warm-up.
MFU = tokens/s x model FLOPs per token / ``--peak-tflops`` (default 989: the dense bf16 peak of an
H100/H200 SXM on its spec sheet; pass the measured matmul peak to compare against that instead).
FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B): 6 N + 12 L H T for training, N the
matmul parameters (the output projection included, the embedding lookup not), attention counted in
full; recomputation by activation checkpointing is not counted (model FLOPs, not hardware FLOPs);
DPO adds the reference's forward, 2 N + 4 L H T. Peak memory is ``torch.cuda.max_memory_allocated``
per row. Start-up: from the row's start to its first optimiser step (model load, data, engine);
commit: the time training is held up by writing the final weights (AlignOps: taking the final
checkpoint, weights only, and waiting for its upload after the held-out evaluation it overlaps).

On the GPU machine the image lacks some wheels: carry pydantic, pydantic-core, trl, datasets (and
their pure-Python dependencies) and liger-kernel (see ``../shared/TESTING.md``).

    python benchmarks/gpu_train.py                        # the GPU run
    python benchmarks/gpu_train.py --peak-tflops 790      # MFU against a measured matmul peak
    python benchmarks/gpu_train.py --tiny --json out.json # CPU smoke (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

QWEN = {"rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 32768}
SHAPES = {
    "0.5b": {**QWEN, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151_936},
    "1.5b": {**QWEN, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151_936},
    # CPU smoke: the same architecture, vocabulary-heavy like the real one
    "tiny": {**QWEN, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 512},
}
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
LEARNING_RATE = 1e-5
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass(frozen=True)
class Row:
    method: str  # sft | dpo
    shape: str
    length: int
    trainer: str  # plain | alignops | trl | alignops-zero3
    checkpointing: bool | None = None  # None: the trainer's default

    @property
    def labels(self) -> tuple[str, str]:
        flag = "" if self.checkpointing is None else (" +ckpt" if self.checkpointing else " -ckpt")
        return f"{self.method} {self.shape} {self.length}", f"{self.trainer}{flag}"


@dataclass
class Result:
    tokens_per_second: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    startup_s: float | None = None
    commit_s: float | None = None
    note: str = ""
    tokens: int = 0
    extra: dict = field(default_factory=dict)


def plan(tiny: bool) -> list[Row]:
    """The rows in priority order."""
    small, large = ("tiny", "tiny") if tiny else ("0.5b", "1.5b")
    short, long = (64, 256) if tiny else (1024, 4096)
    rows = [Row("sft", small, n, t) for n in (short, long) for t in ("plain", "alignops", "trl")]
    rows += [Row("dpo", small, short, t) for t in ("alignops", "trl")]
    rows += [Row("sft", small, short, "alignops-zero3")]
    if not tiny:
        rows += [Row("sft", large, n, t) for n in (short, long) for t in ("plain", "alignops")]
        rows += [Row("sft", small, long, "trl", checkpointing=False), Row("sft", small, long, "alignops", checkpointing=True)]
    return rows


# -- the model, data and store every trainer reads ------------------------------------------------

def flops_per_token(config, length: int, dpo: bool = False) -> float:
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    matmul = layers * (2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size) + config.vocab_size * h
    train = 6 * matmul + 12 * layers * h * length
    return train + (2 * matmul + 4 * layers * h * length if dpo else 0)


class Workspace:
    """A random-initialised checkpoint per shape (weights + a tokenizer of the shape's vocabulary that
    makes a text of n letters n tokens), committed to a local store for AlignOps; datasets of exactly
    ``length`` tokens per sequence."""

    def __init__(self, root: Path, device):
        self.root, self.device = root, device
        self.checkpoints: dict[str, tuple[Path, str]] = {}
        self.store_uri = f"file://{root / 'store'}"
        self.jobs: list[str] = []

    def checkpoint(self, shape: str) -> tuple[Path, str]:
        if shape not in self.checkpoints:
            import torch
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers
            from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

            from alignops.storage import commit_checkpoint, open_store

            config = Qwen2Config(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=0)
            torch.manual_seed(0)
            model = Qwen2ForCausalLM(config)
            # byte-level BPE without merges (what transformers' Qwen2Tokenizer loads): one token per character
            alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
            fillers = [f"<filler{i}>" for i in range(config.vocab_size - len(SPECIAL) - len(alphabet))]
            vocab = {token: i for i, token in enumerate(SPECIAL + alphabet + fillers)}
            core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
            core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            core.decoder = decoders.ByteLevel()
            tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", model_max_length=1 << 20)
            directory = self.root / f"model-{shape}"
            model.save_pretrained(str(directory), safe_serialization=True)
            tokenizer.save_pretrained(str(directory))
            ref = commit_checkpoint(open_store(self.store_uri), directory, f"base-{shape}", step=0)
            self.checkpoints[shape] = (directory, ref.uri)
            del model
        return self.checkpoints[shape]

    @staticmethod
    def words(rng, count: int, vocab: int) -> str:
        """``count`` random letters: ``count`` tokens."""
        return "".join(rng.choice(LETTERS) for _ in range(count))

    def sft_data(self, shape: str, length: int, count: int) -> Path:
        """prompt + completion = ``length`` tokens with bos and eos; 8 prompt tokens."""
        import random

        rng, vocab = random.Random(0), SHAPES[shape]["vocab_size"]
        path = self.root / f"sft-{shape}-{length}.jsonl"
        with open(path, "w") as out:
            for _ in range(count):
                out.write(json.dumps({"prompt": self.words(rng, 8, vocab), "completion": self.words(rng, length - 10, vocab)}) + "\n")
        return path

    def pair_data(self, shape: str, length: int, count: int) -> Path:
        """prompt (a quarter) + chosen/rejected (the rest) = ``length`` tokens each, bos and eos included."""
        import random

        rng, vocab = random.Random(1), SHAPES[shape]["vocab_size"]
        prompt, response = length // 4, length - length // 4 - 2
        path = self.root / f"pairs-{shape}-{length}.jsonl"
        with open(path, "w") as out:
            for _ in range(count):
                out.write(json.dumps({"prompt": self.words(rng, prompt, vocab), "chosen": self.words(rng, response, vocab),
                                      "rejected": self.words(rng, response, vocab)}) + "\n")
        return path


# -- measurement helpers ----------------------------------------------------------------------------

def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def step_shape(row: Row, args) -> tuple[int, bool, int]:
    """(optimiser steps in all, whether it is DPO, items per step: sequences, or pairs for DPO)."""
    dpo = row.method == "dpo"
    return args.warmup + args.steps, dpo, max(1, args.tokens_per_step // (row.length * (2 if dpo else 1)))


# -- the trainers -----------------------------------------------------------------------------------

def plain_row(row: Row, ws: Workspace, args) -> Result:
    """The baseline: eager PyTorch, bf16 autocast on the GPU, fused AdamW, HF's own loss."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    directory, _ = ws.checkpoint(row.shape)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).to(ws.device)
    model.config.use_cache = False
    if row.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    cuda = ws.device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=cuda)
    _, _, batch = step_shape(row, args)
    ids = torch.randint(len(SPECIAL), model.config.vocab_size, (batch, row.length), device=ws.device)
    autocast = torch.autocast(ws.device.type, dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    synchronize()
    startup = time.perf_counter() - started
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize()
            timed = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    seconds = time.perf_counter() - timed
    commit = time.perf_counter()
    model.save_pretrained(str(ws.root / "plain-out"), safe_serialization=True)
    commit_s = time.perf_counter() - commit
    shutil.rmtree(ws.root / "plain-out", ignore_errors=True)
    tokens = args.steps * batch * row.length
    return Result(tokens / seconds, startup_s=startup, commit_s=commit_s, tokens=tokens,
                  extra={"loss": float(loss)})


class LoopProbe:
    """Times AlignOps' TrainLoop from the outside: when ``run`` starts (start-up ends), the warm-up's
    and the last step's ends (synchronised: the loop itself never waits for the GPU), the commits."""

    def __init__(self, warmup: int):
        self.warmup, self.stamps, self.commit_s, self.run_start = warmup, {}, 0.0, None

    def __enter__(self):
        from alignops.workloads.training.loop import TrainLoop

        self.originals = {name: getattr(TrainLoop, name) for name in ("run", "train_step", "commit", "wait_committed")}
        probe, originals = self, self.originals

        def run(loop, *args, **kwargs):
            synchronize()
            probe.run_start = time.perf_counter()
            return originals["run"](loop, *args, **kwargs)

        def train_step(loop, *args, **kwargs):
            record = originals["train_step"](loop, *args, **kwargs)
            step = loop.state.step
            if step == probe.warmup or step == loop.state.total_steps:
                synchronize()
                probe.stamps[step] = (time.perf_counter(), loop.state.tokens_seen)
            return record

        def timed(name):  # the time training is held up: taking the state, and waiting for the upload
            def call(loop, *args, **kwargs):
                synchronize()
                started = time.perf_counter()
                out = originals[name](loop, *args, **kwargs)
                probe.commit_s += time.perf_counter() - started
                return out
            return call

        TrainLoop.run, TrainLoop.train_step = run, train_step
        TrainLoop.commit, TrainLoop.wait_committed = timed("commit"), timed("wait_committed")
        return self

    def __exit__(self, *exc):
        from alignops.workloads.training.loop import TrainLoop

        for name, value in self.originals.items():
            setattr(TrainLoop, name, value)


def alignops_row(row: Row, ws: Workspace, args) -> Result:
    """The real stage (``SftStage`` or ``PreferenceStage``) in this process, as its pod runs it."""
    from alignops.api.validation import parse_job
    from alignops.planner import Defaults, initial_status, resolve_run
    from alignops.workloads.context import make_context
    from alignops.workloads.stages import STAGES

    started = time.perf_counter()
    _, base_uri = ws.checkpoint(row.shape)
    total, dpo, batch = step_shape(row, args)
    data = (ws.pair_data if dpo else ws.sft_data)(row.shape, row.length, batch * total)
    hp = {"learningRate": LEARNING_RATE, "batchSize": batch, "maxSteps": total, "warmupSteps": 0, "maxLength": row.length,
          "logEvery": total, "checkpointEvery": 1_000_000, "precision": args.precision}
    if row.checkpointing is not None:
        hp["gradientCheckpointing"] = row.checkpointing
    stage = {"name": "bench", "type": "preference" if dpo else "sft", "datasets": {"train": {"uri": f"file://{data}"}},
             "hyperparameters": hp}
    if dpo:
        stage["algorithm"] = "dpo"
    name = f"bench-{row.method}-{row.length}-{len(ws.jobs)}"  # a new job: never resume an earlier row's run
    ws.jobs.append(name)
    job = parse_job({"apiVersion": "alignops.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": name},
                     "spec": {"model": {"uri": base_uri}, "stages": [stage]}})
    config = resolve_run(job, initial_status(job), "bench", 1, Defaults(storage_uri=ws.store_uri))
    ctx = make_context(config)
    try:
        with LoopProbe(args.warmup) as probe:
            importlib.import_module(STAGES[config.type]).STAGE(ctx).run()
    finally:  # a 1.5B row commits 18 GB (weights and optimizer state): free the disk for the next row
        shutil.rmtree(ctx.scratch, ignore_errors=True)
        shutil.rmtree(ws.root / "store" / config.job.namespace / name, ignore_errors=True)
    (t0, n0), (t1, n1) = probe.stamps[args.warmup], probe.stamps[total]
    losses = [r["loss"] for r in ctx.metrics.history if "loss" in r]
    return Result((n1 - n0) / (t1 - t0), startup_s=probe.run_start - started, commit_s=probe.commit_s, tokens=n1 - n0,
                  extra={"loss": losses[-1] if losses else None})


def trl_row(row: Row, ws: Workspace, args) -> Result:
    """TRL's SFTTrainer / DPOTrainer with their defaults (the model path given, as users do)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    started = time.perf_counter()
    directory, _ = ws.checkpoint(row.shape)
    total, dpo, batch = step_shape(row, args)
    cuda = ws.device.type == "cuda"
    stamps: dict = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, _args, state, control, **kwargs):
            stamps.setdefault("first", time.perf_counter())

        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step in (args.warmup, total):
                synchronize()
                stamps[state.global_step] = time.perf_counter()

    common = dict(output_dir=str(ws.root / "trl-out"), per_device_train_batch_size=batch, max_steps=total,
                  learning_rate=LEARNING_RATE, max_length=row.length, logging_steps=1_000_000, save_strategy="no",
                  report_to=[], seed=0, dataloader_num_workers=0, use_cpu=not cuda, bf16=cuda)
    if row.checkpointing is not None:
        common["gradient_checkpointing"] = row.checkpointing
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if dpo:
        from trl import DPOConfig, DPOTrainer

        records = [json.loads(line) for line in ws.pair_data(row.shape, row.length, batch * total).read_text().splitlines()]
        trainer = DPOTrainer(model=str(directory), args=DPOConfig(**common), train_dataset=Dataset.from_list(records),
                             processing_class=tokenizer, callbacks=[Clock()])
    else:
        from trl import SFTConfig, SFTTrainer

        ids = torch.randint(len(SPECIAL), SHAPES[row.shape]["vocab_size"], (batch * total, row.length)).tolist()
        trainer = SFTTrainer(model=str(directory), args=SFTConfig(**common), train_dataset=Dataset.from_dict({"input_ids": ids}),
                             processing_class=tokenizer, callbacks=[Clock()])
    out = trainer.train()
    commit = time.perf_counter()
    trainer.save_model(str(ws.root / "trl-saved"))
    commit_s = time.perf_counter() - commit
    shutil.rmtree(ws.root / "trl-saved", ignore_errors=True)
    tokens = args.steps * batch * row.length * (2 if dpo else 1)
    return Result(tokens / (stamps[total] - stamps[args.warmup]), startup_s=stamps["first"] - started, commit_s=commit_s,
                  tokens=tokens, extra={"loss": out.training_loss})


def zero3_row(row: Row, ws: Workspace, args) -> Result:
    """HOOK (issue 12, the DeepSpeed ZeRO engine): once the engine lands, run ``alignops_row`` with the
    stage's ZeRO-3 setting (and, if wanted, TRL through accelerate's DeepSpeed plugin) and return its
    Result; until then the row says it is pending."""
    return Result(note="pending ZeRO-3")


TRAINERS = {"plain": plain_row, "alignops": alignops_row, "trl": trl_row, "alignops-zero3": zero3_row}


# -- the run ----------------------------------------------------------------------------------------

def run_rows(args, ws: Workspace) -> list[tuple[Row, Result]]:
    import torch

    from transformers import Qwen2Config

    results: list[tuple[Row, Result]] = []
    began, longest = time.perf_counter(), 0.0
    for row in plan(args.tiny):
        elapsed = time.perf_counter() - began
        if elapsed + longest > args.budget_seconds:
            results.append((row, Result(note="no time left")))
            continue
        if row.trainer == "trl" and not _has("trl"):
            results.append((row, Result(note="no trl")))
            continue
        ws.checkpoint(row.shape)  # made once per shape, outside every row's start-up
        reset_memory()
        started = time.perf_counter()
        try:
            result = TRAINERS[row.trainer](row, ws, args)
        except torch.cuda.OutOfMemoryError:
            result = Result(note="out of memory")
        except Exception:  # noqa: BLE001 - a failed row is reported, the others still run
            traceback.print_exc()
            result = Result(note="failed (stderr)")
        result.peak_gib = peak_gib() if result.tokens_per_second else None
        if result.tokens_per_second and ws.device.type == "cuda":
            config = Qwen2Config(**SHAPES[row.shape])
            result.mfu = result.tokens_per_second * flops_per_token(config, row.length, row.method == "dpo") / (args.peak_tflops * 1e12)
        longest = max(longest, time.perf_counter() - started)
        results.append((row, result))
        print(f"{' '.join(row.labels)}: {result.tokens_per_second or 0:.0f} tokens/s {result.note}", file=sys.stderr, flush=True)
        reset_memory()
    return results


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(results: list[tuple[Row, Result]], args, device: str) -> None:
    print(f"\nTraining throughput on {device}: {args.tokens_per_step} tokens per step, {args.steps} steps timed")
    print(f"after {args.warmup}; MFU against a {args.peak_tflops:g} TFLOP/s bf16 peak; GiB: peak memory; seconds")
    header = f"{'row':<14}{'trainer':<15}{'tok/s':>8}{'MFU':>5}{'GiB':>6}{'start s':>8}{'commit':>7}  note"
    print(header)
    print("-" * len(header))
    for row, r in results:
        workload, trainer = row.labels
        mfu = "-" if r.mfu is None else f"{100 * r.mfu:.0f}%"
        print(f"{workload:<14}{trainer:<15}{cell(r.tokens_per_second, '.0f'):>8}{mfu:>5}{cell(r.peak_gib, '.1f'):>6}"
              f"{cell(r.startup_s, '.1f'):>8}{cell(r.commit_s, '.1f'):>7}  {r.note}")
    if device != "the CPU":  # the CPU smoke's tiny rows say nothing about the aims
        print_aims(results)


def print_aims(results: list[tuple[Row, Result]]) -> None:
    """The issue's aims for SFT: >= 1.0x the plain loop, >= 1.5x TRL's defaults at equal or lower
    memory, MFU >= 40 % at the long length."""
    by = {(row.method, row.shape, row.length, row.trainer, row.checkpointing): r for row, r in results}
    for (method, shape, length, trainer, ckpt), ours in by.items():
        if method != "sft" or trainer != "alignops" or ckpt is not None or not ours.tokens_per_second:
            continue
        for other, aim in (("plain", 1.0), ("trl", 1.5)):
            theirs = by.get((method, shape, length, other, None))
            if theirs is None or not theirs.tokens_per_second:
                continue
            ratio = ours.tokens_per_second / theirs.tokens_per_second
            memory = "" if ours.peak_gib is None or theirs.peak_gib is None else (
                f", {ours.peak_gib:.1f} vs {theirs.peak_gib:.1f} GiB")
            verdict = "met" if ratio >= aim and (ours.peak_gib or 0) <= (theirs.peak_gib or 0) + 1e-9 else "missed"
            print(f"sft {shape} {length} vs {other}: {ratio:.2f}x (aim {aim}x, <= memory){memory}: {verdict}")
        if ours.mfu is not None and length >= 4096:
            print(f"sft {shape} {length}: MFU {100 * ours.mfu:.0f}% (aim >= 40%): {'met' if ours.mfu >= 0.4 else 'missed'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the CPU smoke: tiny shapes, 1 + 2 steps per row")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the GPU's dense bf16 peak in TFLOP/s for MFU (default 989: H100/H200 SXM spec sheet)")
    parser.add_argument("--tokens-per-step", type=int, help="tokens per optimiser step (default 8192; --tiny 256)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; --tiny 1)")
    parser.add_argument("--steps", type=int, help="timed steps (default 10; --tiny 2)")
    parser.add_argument("--budget-seconds", type=float, default=480.0, help="start no row after this (default 480)")
    parser.add_argument("--precision", default="auto", help="AlignOps' precision (auto: bf16 on the GPU, fp32 on the CPU)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    args.tokens_per_step = args.tokens_per_step or (256 if args.tiny else 8192)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.steps = args.steps or (2 if args.tiny else 10)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        print("no GPU: run with --tiny for the CPU smoke", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("ALIGNOPS_CPU_THREADS", "1")))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "the CPU"
    with tempfile.TemporaryDirectory(prefix="alignops-gpu-train-") as tmp:
        results = run_rows(args, Workspace(Path(tmp), device))
    print_table(results, args, name)
    if args.json:
        args.json.write_text(json.dumps([{**asdict(row), **asdict(r)} for row, r in results], indent=1))
    return 0 if any(r.tokens_per_second for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
