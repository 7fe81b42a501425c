"""Held-out figures every stage reports before and after training: greedy accuracy and held-out
loss (``generation``), and figures on comparison pairs (``pairs``)."""
