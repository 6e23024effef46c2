"""The outlier-car check: features, a profile of normal cars, zoom re-prediction, contact sheets."""
