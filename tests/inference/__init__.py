"""Tests of carvana_seg.inference."""
