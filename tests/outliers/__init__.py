"""Tests of carvana_seg.outliers."""
