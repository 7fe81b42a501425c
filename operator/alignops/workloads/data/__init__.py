"""Training and held-out data: records from storage or the demo generator (``records``), the SFT
tokenisation (``sft``), comparison formats (``comparisons``), batches as tensors (``batching``) and
each stage's held-out split (``held_out``)."""
