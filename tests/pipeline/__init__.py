"""Tests of carvana_seg.pipeline."""
