#!/usr/bin/env bash
# Snakemake runs this inside the new conda environment of environment.yml (--software-deployment-method conda),
# after creating it: the environment then holds carvana-seg itself, so a job's `python -m carvana_seg` is the
# package of the job's own environment. CARVANA_SEG_SRC is the project checkout, exported by
# workflow/rules/common.smk before Snakemake builds any environment. Editable (-e): the environment's hash covers
# only its file, so code edits must reach the jobs without rebuilding it.
set -euo pipefail
: "${CARVANA_SEG_SRC:?CARVANA_SEG_SRC is unset: run this through Snakemake (workflow/rules/common.smk exports it)}"
python -m pip install --no-deps --no-build-isolation -e "$CARVANA_SEG_SRC"
