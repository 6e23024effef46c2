"""Model construction, losses, augmentation, datasets and the resumable training loop."""
