"""Tests of carvana_seg.data."""
