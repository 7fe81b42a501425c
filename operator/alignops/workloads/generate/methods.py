"""The five methods of the ``generate`` stage, registered by name in ``GENERATE_METHODS``; each is
``fn(run: GenerationRun) -> list[dict]`` (the records, at most ``size``), counting what it drops in
``run.counts``. Prompts are rendered from the templates file (``resources``); every generated text
is parsed (``filters``): a text that parses to nothing is counted ``unparseable`` and skipped.

- ``self_instruct`` (Wang et al., arXiv:2212.10560): a prompt lists ``seedTasksPerPrompt`` tasks
  of the pool (two of them generated ones once there are any); the model writes the next task; it
  joins the pool if its ROUGE-L to every pool task is below ``rougeThreshold``; answers are sampled
  and the verifier keeps the first that passes. Writes sft records.
- ``evol_instruct`` (Xu et al., arXiv:2304.12244): an instruction is rewritten with a random
  in-depth template or the in-breadth one; failed evolutions are dropped (nothing parsed, a copied
  template marker, no change: ROUGE-L to its parent at the threshold, or an answer that refuses);
  survivors evolve again up to ``evolutions`` steps. Writes sft records.
- ``self_align`` (Sun et al., arXiv:2305.03047): principles and exemplars precede each seed
  instruction; the record keeps the instruction alone (the principles are engraved, not prompted).
- ``constitutional`` (SL-CAI, Bai et al., arXiv:2212.08073): response -> critique against a
  sampled principle -> revision; the revisions are the sft records.
- ``ai_preferences`` (RL-CAI, Bai et al.; RLAIF, Lee et al., arXiv:2309.00267): two responses per
  prompt, the judge answers (A) or (B) under a sampled principle; written as pairs.

Their quality needs a capable model: a tiny one shows the mechanics (prompts built, answers parsed,
unparseable ones counted), not good data.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from alignops.algos.registry import Registry
from alignops.api.generate import GenerateHyperparameters
from alignops.workloads.generate.filters import InstructionPool, Verifier, first_line, first_paragraph
from alignops.workloads.generate.resources import Principle, Templates, task_list_prompt
from alignops.workloads.generate.rouge import rouge_l
from alignops.workloads.generate.sampler import TextSampler


@dataclass
class GenerationRun:
    """What a method works with: settings, files, seeds, the held-out prompts to keep out, the
    writer's sampler and the judge's (ai_preferences), a seeded RNG and the drop counters."""

    hp: GenerateHyperparameters
    templates: Templates
    principles: list[Principle]
    exemplars: list[dict]
    seeds: list[str]
    held_out: list[str]
    sampler: TextSampler
    judge: TextSampler | None = None
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.rng = random.Random(self.hp.seed)
        self.verifier = Verifier(self.hp.verifier, self.hp.verifier_threshold, self.hp.max_new_tokens, self.counts)

    def rounds(self, records: list[dict]):
        """Round numbers until ``size`` records are written or ``rounds`` are spent; each round's
        start is a progress record (step = rounds done, the records so far)."""
        for round_ in range(self.hp.rounds):
            self.sampler.ctx.metrics.log({"step": round_, "total_steps": self.hp.rounds, "generated_records": len(records),
                                          "generated_tokens": self.sampler.generated_tokens})
            if len(records) >= self.hp.size:
                return
            self.counts["rounds"] += 1
            yield round_

    def draw(self, pool: list[str], k: int) -> list[str]:
        return self.rng.sample(pool, min(k, len(pool)))

    def answer_prompts(self, instructions: list[str]) -> list[str]:
        return [self.templates.render("answer", instruction=i) for i in instructions]

    def answers(self, instructions: list[str]) -> list[str | None]:
        """Per instruction, the first of ``samplesPerPrompt`` sampled answers the verifier keeps."""
        if not instructions:
            return []
        candidates = self.sampler.complete(self.answer_prompts(instructions), n=self.hp.samples_per_prompt)
        return self.verifier.pick(instructions, candidates)

    def parsed(self, texts: list[str], parse: Callable[[str], str], what: str) -> list[str]:
        out = [parse(t) for t in texts]
        self.counts[f"unparseable{what}"] += sum(not t for t in out)
        return out


GENERATE_METHODS: Registry[Callable[[GenerationRun], list[dict]]] = Registry("generate method")


def _sft(run: GenerationRun, instructions: list[str]) -> list[dict]:
    return [{"prompt": p, "completion": a}
            for p, a in zip(run.answer_prompts(instructions), run.answers(instructions)) if a is not None]


@GENERATE_METHODS.register("self_instruct")
def self_instruct(run: GenerationRun) -> list[dict]:
    hp, records, generated = run.hp, [], []
    pool = InstructionPool(hp, run.seeds, run.held_out, run.counts)
    for _ in run.rounds(records):
        prompts = []
        for _ in range(hp.prompts_per_round):
            # Self-Instruct: mostly seed tasks, plus two generated ones when there are any
            shown_generated = run.draw(generated, 2) if generated else []
            tasks = run.draw(run.seeds, hp.seed_tasks_per_prompt - len(shown_generated)) + shown_generated
            run.rng.shuffle(tasks)
            prompts.append(task_list_prompt(run.templates, tasks))
        texts = [group[0] for group in run.sampler.complete(prompts, n=1, stop=("\n",))]
        new = [i for i in (first_line(t) for t in texts) if pool.admit(i)]
        generated += new
        records += _sft(run, new)
    run.counts["instructions"] = len(generated)
    return records[: hp.size]


@dataclass
class _Lineage:
    instruction: str
    depth: int


def _failed_evolution(run: GenerationRun, parent: str, evolved: str) -> bool:
    markers = [m.lower() for m in run.templates.get("evol_instruct.markers")]
    if not evolved:
        run.counts["unparseableEvolution"] += 1
    elif any(m in evolved.lower() for m in markers):
        run.counts["droppedCopiedTemplate"] += 1
    elif rouge_l(evolved, parent) >= run.hp.rouge_threshold:
        run.counts["droppedUnchanged"] += 1
    elif not run.hp.min_instruction_chars <= len(evolved) <= run.hp.max_instruction_chars:
        run.counts["droppedLength"] += 1
    else:
        return False
    return True


@GENERATE_METHODS.register("evol_instruct")
def evol_instruct(run: GenerationRun) -> list[dict]:
    hp, records = run.hp, []
    population = [_Lineage(s, 0) for s in run.seeds]
    in_depth, in_breadth = run.templates.get("evol_instruct.in_depth"), run.templates.get("evol_instruct.in_breadth")
    refusals = [r.lower() for r in run.templates.get("evol_instruct.refusals")]
    for _ in run.rounds(records):
        parents = run.draw([p for p in population if p.depth < hp.evolutions], hp.prompts_per_round)
        if not parents:
            break
        templates = [run.rng.choice(in_depth + [in_breadth]) for _ in parents]
        prompts = [run.templates.render("", t, instruction=p.instruction) for t, p in zip(templates, parents)]
        texts = [g[0] for g in run.sampler.complete(prompts, n=1)]
        survivors = [_Lineage(first_paragraph(t), p.depth + 1) for t, p in zip(texts, parents)
                     if not _failed_evolution(run, p.instruction, first_paragraph(t))]
        survivors = [s for s in survivors if not any(rouge_l(s.instruction, h) >= hp.rouge_threshold for h in run.held_out)]
        answers = run.answers([s.instruction for s in survivors])
        for lineage, answer in zip(survivors, answers):
            if answer is None:
                continue
            if any(r in answer.lower() for r in refusals):
                run.counts["droppedRefusal"] += 1
                continue
            population.append(lineage)
            records.append({"prompt": run.templates.render("answer", instruction=lineage.instruction), "completion": answer})
    run.counts["evolved"] = len(population) - len(run.seeds)
    return records[: hp.size]


def _seed_batches(run: GenerationRun, records: list[dict]):
    """The seed prompts, shuffled, ``promptsPerRound`` at a time, round after round."""
    order = list(run.seeds)
    run.rng.shuffle(order)
    for round_ in run.rounds(records):
        start = (round_ * run.hp.prompts_per_round) % len(order)
        yield [order[(start + i) % len(order)] for i in range(run.hp.prompts_per_round)]


@GENERATE_METHODS.register("self_align")
def self_align(run: GenerationRun) -> list[dict]:
    hp, records, t = run.hp, [], run.templates
    principles = "".join(t.render("self_align.principle", number=i + 1, statement=p.statement) for i, p in enumerate(run.principles))
    exemplars = "".join(t.render("self_align.exemplar", **e) for e in run.exemplars)
    for instructions in _seed_batches(run, records):
        prompts = [t.render("self_align.prompt", principles=principles.rstrip("\n"), exemplars=exemplars, instruction=i)
                   for i in instructions]
        groups = run.sampler.complete(prompts, n=hp.samples_per_prompt, stop=("\nUser:",))
        # the response ends where the model starts the next turn
        cleaned = [[first_paragraph(c.split("\nUser:", 1)[0]) for c in group] for group in groups]
        records += [{"prompt": run.templates.render("answer", instruction=i), "completion": a}
                    for i, a in zip(instructions, run.verifier.pick(instructions, cleaned)) if a is not None]
    return records[: hp.size]


@GENERATE_METHODS.register("constitutional")
def constitutional(run: GenerationRun) -> list[dict]:
    hp, records, t = run.hp, [], run.templates
    for instructions in _seed_batches(run, records):
        responses = run.parsed([g[0] for g in run.sampler.complete(run.answer_prompts(instructions))], first_paragraph, "Response")
        principles = [run.rng.choice(run.principles) for _ in instructions]
        critiques = run.parsed([g[0] for g in run.sampler.complete(
            [t.render("constitutional.critique", instruction=i, response=r, critique_request=p.critique)
             for i, r, p in zip(instructions, responses, principles)])], first_paragraph, "Critique")
        revisions = run.parsed([g[0] for g in run.sampler.complete(
            [t.render("constitutional.revision", instruction=i, response=r, critique_request=p.critique, critique=c,
                      revision_request=p.revision)
             for i, r, p, c in zip(instructions, responses, principles, critiques)])], first_paragraph, "Revision")
        keep = [bool(r and c and v) for r, c, v in zip(responses, critiques, revisions)]
        chosen = run.verifier.pick(instructions, [[v] if k else [] for v, k in zip(revisions, keep)])
        for i, p, revision in zip(instructions, principles, chosen):
            if revision is not None:
                records.append({"prompt": run.templates.render("answer", instruction=i), "completion": revision, "principle": p.name})
    return records[: hp.size]


def judge_choice(text: str) -> str | None:
    """``A`` or ``B`` from a judge's answer (``A)``, ``(B) ...``, ``b``); None when it is neither."""
    line = first_line(text).lstrip("( ").upper()
    return line[0] if line[:1] in ("A", "B") and (len(line) == 1 or not line[1].isalpha()) else None


@GENERATE_METHODS.register("ai_preferences")
def ai_preferences(run: GenerationRun) -> list[dict]:
    hp, records, t = run.hp, [], run.templates
    judge = run.judge or run.sampler
    for instructions in _seed_batches(run, records):
        pairs = [[first_paragraph(c) for c in group] for group in run.sampler.complete(run.answer_prompts(instructions), n=2)]
        usable = []
        for instruction, (a, b) in zip(instructions, pairs):
            if not a or not b:
                run.counts["unparseableResponse"] += 1
            elif a == b:
                run.counts["droppedTies"] += 1
            else:
                usable.append((instruction, a, b, run.rng.choice(run.principles)))
        if not usable:
            continue
        verdicts = judge.complete([t.render("ai_preferences.judge", instruction=i, principle=p.preference, response_a=a, response_b=b)
                                   for i, a, b, p in usable], n=1, max_new_tokens=min(hp.max_new_tokens, 8))
        for (instruction, a, b, principle), verdict in zip(usable, verdicts):
            choice = judge_choice(verdict[0])
            if choice is None:
                run.counts["unparseableJudgement"] += 1
                continue
            chosen, rejected = (a, b) if choice == "A" else (b, a)
            run.counts[f"judged{choice}"] += 1
            records.append({"prompt": run.templates.render("answer", instruction=instruction), "chosen": chosen,
                            "rejected": rejected, "principle": principle.name})
    return records[: hp.size]
