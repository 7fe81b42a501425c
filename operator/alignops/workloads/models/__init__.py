"""Models: built in code (``build``), loaded from checkpoints (``loading``), where a stage's policy
starts (``policy``), the frozen reference (``reference``) and what a model gives a sequence
(``scoring``)."""
