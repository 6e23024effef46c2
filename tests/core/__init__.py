"""Tests of carvana_seg.core."""
