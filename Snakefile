# carvana-seg: the Carvana image-masking pipeline as a Snakemake DAG.
#   snakemake --cores all --resources gpu=1                                    (competition config)
#   snakemake --cores all --resources gpu=1 --configfile config/demo.yaml     (embedded synthetic demo)
#   snakemake ... --configfile config/config.yaml config/rehearse.yaml        (files merged in order, later wins)
# A config given with --configfile is complete on its own: keys it leaves out take the schema's defaults, never
# config/config.yaml's values; config/config.yaml is read only when no --configfile is given.
from snakemake.utils import min_version, validate

from carvana_seg.pipeline.stages import LOCAL_RULES

min_version("9.0")


if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


# fetch and submit need the internet: on a cluster they run on the submitting host. The list lives once, in
# carvana_seg.pipeline.stages.LOCAL_RULES; this is the call the localrules directive compiles to.
workflow.localrules(*LOCAL_RULES)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/outliers.smk"
include: "workflow/rules/pseudo.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),
