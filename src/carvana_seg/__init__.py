"""carvana-seg: a reproducible Snakemake pipeline for Carvana-style image masking."""

__version__ = "0.1.0"
