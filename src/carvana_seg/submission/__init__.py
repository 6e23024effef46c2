"""The RLE submission: writing and validating it, scoring it, uploading it to Kaggle."""
