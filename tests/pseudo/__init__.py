"""Tests of carvana_seg.pseudo."""
