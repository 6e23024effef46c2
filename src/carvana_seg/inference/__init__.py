"""Inference stages: out-of-fold predictions, threshold search, the test ensemble, predict and export."""
