"""Typed, frozen views of the config sections the stages read: one module per schema section, one generic builder."""
