"""Training: the loop (``loop``: ``TrainLoop``, ``MicroBatchLoss``), the state a checkpoint holds
(``state``: ``TrainState``), the engine seam between them and the hardware (``engine``), and the
data order (``order``)."""
