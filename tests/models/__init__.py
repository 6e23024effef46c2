"""Tests of carvana_seg.models."""
