"""The ``transformers`` rollout engine: batched ``model.generate`` with ``num_return_sequences=n``
on the trainer's own module (left padding), CPU or GPU.

Its log-probs come from the raw logits ``generate`` returns (``output_logits``): ``log softmax(z/T)``
of each sampled token, the same quantity the trainer recomputes, so the rollout/trainer gap measures
only numerics (padding side, KV cache, batch shape). Top-k is switched off (transformers applies
top_k=50 when unset): the trainer's distribution has no top-k.

Seeding: one torch generator per call, seeded with the call's first prompt seed; its draws for the
rows of a batch are independent, so equal prompts in one call still get independent samples.

A response ends at its first end-of-sequence token (any of the model's: ``stop_token_ids``) or where
its text first contains a stop string (both kept); ``generate`` pads finished rows with the pad token, which is never part of a response.
"""

from __future__ import annotations

import contextlib

import torch

from alignops.workloads.models.loading import stop_token_ids
from alignops.workloads.rollout.base import ENGINES, Completion, EngineInputs, EngineTraits, SamplingSettings


class TransformersEngine:
    name = "transformers"

    def __init__(self, model, tokenizer, prompts_per_call: int = 64, autocast: torch.dtype | None = None):
        self.model, self.tokenizer, self.prompts_per_call, self.autocast = model, tokenizer, prompts_per_call, autocast

    def update_weights(self, model) -> None:
        # colocated: the engine samples with the trainer's module itself, so there is nothing to copy
        self.model = model

    def sleep(self) -> None:
        pass  # the trainer's own module: nothing of its own to give back

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seeds: list[int]) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        torch.manual_seed(seeds[0])  # the trainer's RNG stream is restored below: sampling never shifts it
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.prompts_per_call):
                out += self._generate(prompts[start : start + self.prompts_per_call], sampling)
        finally:
            self.model.train(was_training)
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        return out

    def _generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[list[Completion]]:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=stop_token_ids(self.model, tok),
                      num_return_sequences=sampling.n, return_dict_in_generate=True, output_logits=True)
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        autocast = torch.autocast(device.type, dtype=self.autocast) if self.autocast is not None else contextlib.nullcontext()
        with autocast:
            generated = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new_tokens = generated.sequences[:, width:]  # (P*n, T), rows grouped by prompt
        temperature = 1.0 if sampling.greedy else sampling.temperature
        logits = torch.stack(generated.logits, dim=1).float() / temperature  # (P*n, T, V)
        logps = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completions = []
        for row in range(new_tokens.shape[0]):
            ids = new_tokens[row].tolist()
            length, finished = self._response_length(ids, sampling.stop)
            completions.append(Completion(
                token_ids=ids[:length],
                text=tok.decode(ids[:length], skip_special_tokens=True),
                logprobs=logps[row, :length].tolist(),
                finish_reason="stop" if finished else "length",
            ))
        n = sampling.n
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _response_length(self, ids: list[int], stop: tuple[str, ...]) -> tuple[int, bool]:
        """(tokens in the response, whether it ended by itself) for one row of ``generate``'s output."""
        stops = set(stop_token_ids(self.model, self.tokenizer))
        end = next((i + 1 for i, token in enumerate(ids) if token in stops), None)
        if stop:
            limit = end or len(ids)
            text = self.tokenizer.decode(ids[:limit], skip_special_tokens=True)
            if any(s in text for s in stop):
                for i in range(limit):
                    if any(s in self.tokenizer.decode(ids[: i + 1], skip_special_tokens=True) for s in stop):
                        return i + 1, True
        return (end, True) if end is not None else (len(ids), False)


@ENGINES.register("transformers", traits=EngineTraits(loads_from_disk=False))
def _transformers(inputs: EngineInputs) -> TransformersEngine:
    hp = inputs.hyperparameters
    return TransformersEngine(inputs.model, inputs.tokenizer, hp.generation_batch_size, inputs.extra.get("autocast"))
