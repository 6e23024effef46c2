#!/usr/bin/env bash
# Snakemake runs this inside the new conda environment of the .yaml file beside it, after creating it: it installs
# carvana-seg itself (editable, no dependencies: the .yaml pins them) exactly as the project-wide
# environment.post-deploy.sh does, from CARVANA_SEG_SRC (exported by workflow/rules/common.smk).
set -euo pipefail
: "${CARVANA_SEG_SRC:?CARVANA_SEG_SRC is unset: run this through Snakemake (workflow/rules/common.smk exports it)}"
exec bash "$CARVANA_SEG_SRC/environment.post-deploy.sh"
