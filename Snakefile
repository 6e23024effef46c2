# carvana-seg: the Carvana image-masking pipeline as a Snakemake DAG.
#   snakemake --cores all --resources gpu=1                          (competition config)
#   snakemake --cores all --resources gpu=1 --configfile config/demo.yaml   (embedded synthetic demo)
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/outliers.smk"
include: "workflow/rules/pseudo.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_targets(),
    default_target: True
