"""Tests of carvana_seg.training."""
