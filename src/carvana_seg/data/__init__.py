"""Data sources (kaggle, local, synthetic) and input validation."""
