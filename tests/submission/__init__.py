"""Tests of carvana_seg.submission."""
