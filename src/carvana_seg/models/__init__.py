"""Model construction, checkpoints and the inference runtime (device, autocast, flip-TTA), shared by training and
inference."""
