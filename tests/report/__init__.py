"""Tests of carvana_seg.report."""
