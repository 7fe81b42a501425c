"""Training data with nothing to learn is an error, not a run that trains on a constant loss.

Every trained stage keeps only the items that can move its loss and fails at once (a
``DatasetError``, exit 78, naming the file and the setting to change) when none is left; a large
share dropped is a warning in the log and the ``droppedExamples`` metric. What "can move the loss"
means is the stage's: an SFT example needs a response token within ``maxLength``; a comparison
needs responses that still differ once tokenised and cut to ``maxLength`` (equal sequences get
equal scores, so every pairwise loss has a zero gradient).
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence, TypeVar

from alignops.workloads.data.records import DatasetError
from alignops.workloads.data.sft import SftExample

T = TypeVar("T")

DROPPED_WARNING_SHARE = 0.1


def keep_learnable(items: Sequence[T], learns: Callable[[T], bool], nothing: str, dropped: str) -> list[int]:
    """Indices of the items that ``learns``. None: DatasetError(``nothing``); more than
    ``DROPPED_WARNING_SHARE`` dropped: a warning on stderr, ``dropped`` formatted with ``{dropped}``
    and ``{total}``."""
    kept = [index for index, item in enumerate(items) if learns(item)]
    if not kept:
        raise DatasetError(nothing)
    count = len(items) - len(kept)
    if count > DROPPED_WARNING_SHARE * len(items):
        print("warning: " + dropped.format(dropped=count, total=len(items)), file=sys.stderr)
    return kept


def responses_differ(sequences: Sequence[SftExample]) -> bool:
    """A comparison can teach something: its responses are not all the same token sequence."""
    return len({tuple(s.input_ids) for s in sequences}) > 1


def learnable_comparisons(sequences: Sequence[Sequence[SftExample]], source: str, max_length: int,
                          fields: str = "`chosen` and `rejected`") -> list[int]:
    """Indices of the comparisons (each a list of tokenised responses) whose responses differ."""
    return keep_learnable(
        sequences, responses_differ,
        nothing=f"{source}: no comparison has responses that differ within maxLength {max_length} (they are equal, "
                f"empty, or cut off inside the prompt): nothing to learn; check the {fields} fields or raise "
                "hyperparameters.maxLength",
        dropped=f"{source}: {{dropped}} of {{total}} comparisons have responses that do not differ within maxLength "
                f"{max_length} and are skipped; raise hyperparameters.maxLength to keep them",
    )


def learnable_examples(examples: Sequence[SftExample], source: str, max_length: int) -> list[int]:
    """Indices of the SFT-tokenised examples with a response token within ``maxLength``; all of them
    empty (only end-of-sequence to learn) is an error too."""
    kept = keep_learnable(
        examples, lambda e: e.learns,
        nothing=f"{source}: no example has a response token within maxLength {max_length} "
                "(every prompt is as long or longer); raise hyperparameters.maxLength",
        dropped=f"{source}: {{dropped}} of {{total}} examples have no response token within maxLength {max_length} "
                "and are skipped; raise hyperparameters.maxLength to keep them",
    )
    if all(examples[i].empty_response for i in kept):
        raise DatasetError(f"{source}: every completion is empty; nothing to learn but end-of-sequence "
                           "(check the `completion` field or the assistant turns)")
    return kept
