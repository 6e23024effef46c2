"""Pipeline plumbing: the stage CLI, configuration, code fingerprints, GPU claims, staged writes, errors."""
