"""Plan before you spend: what a config will cost before its first job runs (``python -m carvana_seg plan``).

Per stage of the DAG: jobs (the counts ``snakemake -n`` lists), images, disk written, model FLOPs (torch's flop
counter at each variant's size) and projected hours on a device of the throughput table. Modules: ``data`` (how
big the data is), ``model_cost`` (FLOPs, parameters), ``throughput`` (devices and loaders), ``stages`` (the
per-stage arithmetic), ``command`` (the CLI and the printed table).
"""
