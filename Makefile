# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Both are idempotent: the environment in .venv/ is (re)built only when requirements.txt, requirements-dev.txt (the
# test and style tools, installed here beside the runtime) or pyproject.toml change.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
CONFIG ?= config/demo.yaml
# One GPU job at a time where `nvidia-smi -L` lists a GPU; otherwise the CPU profile (one torch thread per model
# job, as many jobs as cores: ~30 % faster for the demo on 2 cores, see profiles/cpu/profile.yaml).
NGPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
RUN_FLAGS ?= $(if $(filter-out 0,$(NGPUS)),--resources gpu=1,--workflow-profile cpu)

# The run's name (results/<name>/), read from $(CONFIG); evaluated only by the targets that use it.
NAME = $(shell $(BIN)/python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" $(CONFIG))

.PHONY: env demo report tensorboard serve test test-fast dry-run lint style plan rehearse clean-demo wheelhouse gpu-check

env: $(STAMP)

# Offline GPU boxes (docs/gpu.md): `make env TORCH=system WHEELHOUSE=wheelhouse` builds .venv over the machine's own
# torch/torchvision (--system-site-packages) and installs the rest from the wheelhouse only (--no-index).
TORCH ?= pinned
WHEELHOUSE ?= wheelhouse
ifeq ($(TORCH),system)
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv --system-site-packages $(VENV)
	@$(BIN)/python -c "import torch, torchvision; print('system torch', torch.__version__, 'CUDA', torch.version.cuda)" \
	  || { echo "TORCH=system: no torch/torchvision in the site-packages of $(PY)" >&2; exit 1; }
	test -f $(WHEELHOUSE)/requirements.txt || { echo "$(WHEELHOUSE)/requirements.txt missing: run make wheelhouse" >&2; exit 1; }
	$(BIN)/python -m pip install -q --no-index --find-links $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt
	$(BIN)/python -m pip install -q --no-index --find-links $(WHEELHOUSE) --no-deps -e .
	touch $(STAMP)
else
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)
endif

# Wheels for an offline target (run on a machine with PyPI): everything pyproject.toml needs but torch/torchvision,
# for Python $(PYVER) on $(PLATFORM); with TARGET_FREEZE=<the target's pip freeze> only what it lacks.
PYVER ?= 3.11
PLATFORM ?= manylinux2014_x86_64 manylinux_2_28_x86_64
TARGET_FREEZE ?=
# `weights`: the ImageNet EfficientNet-Lite0 file config/sample.yaml trains from (16.6 MiB); leave it out
# (WHEELHOUSE_EXTRAS="models workflow") where the wheelhouse must stay under 64 MiB and no run needs it (docs/gpu.md).
WHEELHOUSE_EXTRAS ?= models workflow weights
wheelhouse: $(STAMP)
	$(BIN)/python -m carvana_seg.pipeline.wheelhouse --download $(WHEELHOUSE) --python-version $(PYVER) \
	  --platform $(PLATFORM) --extras $(WHEELHOUSE_EXTRAS) $(if $(TARGET_FREEZE),--freeze $(TARGET_FREEZE))

# On a GPU box, no network, under 8 minutes: versions, training/test-time rates, memory, a tiny DAG with
# --resources gpu=1 -> results/gpu-check/gpu_check.{json,md}. Toy sizes on a CPU-only machine (docs/gpu.md).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out results/gpu-check $(GPU_CHECK_ARGS)

# --report-after-run: the HTML report (results/<name>/report.html) is written once the run has finished.
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(RUN_FLAGS) --configfile $(CONFIG) \
	  --report results/$(NAME)/report.html --report-after-run

# The HTML report of a run: brings the run up to date first (nothing to do after `make demo`; it includes the
# report_figures rule), then `snakemake --report results/<name>/report.html`, <name> read from $(CONFIG).
report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(RUN_FLAGS) --configfile $(CONFIG)
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report results/$(NAME)/report.html

# Live training curves of the run (one TensorBoard run per variant x fold x round), at http://localhost:6006.
tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir results/$(NAME)/tensorboard --port $${TB_PORT:-6006}

# The cut-out API and page of the run's final ensemble at http://127.0.0.1:$(PORT)/ (docs/serve.md); <name> read
# from $(CONFIG). SERVE_ARGS adds options, e.g. SERVE_ARGS="--backend onnx --api-key ...".
PORT ?= 8000
serve: $(STAMP)
	$(BIN)/python -m carvana_seg serve --models results/$(NAME) --port $(PORT) $(SERVE_ARGS)

dry-run: $(STAMP)
	$(BIN)/snakemake -n --configfile $(CONFIG)

# What $(CONFIG) will cost before its first job: jobs, images, disk, FLOPs and hours on $(GPU) per stage.
# PROFILE=slurm also checks every job against the cluster's nodes (`sinfo`), as the run does before its first sbatch.
GPU ?= h100
plan: $(STAMP)
	$(BIN)/python -m carvana_seg plan --configfile $(CONFIG) --gpu $(GPU) $(if $(PROFILE),--profile profiles/$(PROFILE))

# The competition DAG end to end at toy sizes: config/config.yaml itself with config/rehearse.yaml over it (sizes,
# epochs, the real sample in ../shared/carvana-sample; the synthetic set where that is absent).
SAMPLE := ../shared/carvana-sample/train_masks.csv
REHEARSE := config/config.yaml config/rehearse.yaml $(if $(wildcard $(SAMPLE)),,config/rehearse-synthetic.yaml)
rehearse: $(STAMP)
	$(BIN)/python -m carvana_seg plan --configfile $(REHEARSE) --gpu $(if $(filter-out 0,$(NGPUS)),$(GPU),cpu)
	$(BIN)/snakemake --cores $(CORES) $(RUN_FLAGS) --configfile $(REHEARSE)

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile $(CONFIG)

# Style checks, all four run and any failure fails: ruff (lint rules and formatting, settings in pyproject.toml)
# over the Python, snakefmt over the Snakemake code, and Snakemake's own linter. Fix with `ruff format`,
# `ruff check --fix` and `snakefmt Snakefile workflow/rules`.
STYLE_PY := src tests benchmarks
style: $(STAMP)
	@rc=0; \
	$(BIN)/ruff check $(STYLE_PY) || rc=1; \
	$(BIN)/ruff format --check $(STYLE_PY) || rc=1; \
	$(BIN)/snakefmt --check Snakefile workflow/rules || rc=1; \
	$(BIN)/snakemake --lint --configfile $(CONFIG) || rc=1; \
	exit $$rc

# pytest exits 5 when it collects nothing: that is a failure here, never a silent pass. `make test` runs every
# test and prints the 15 slowest; `make test-fast` only the unit tier: the tests carrying none of the markers
# below (pyproject.toml: no Snakemake run or dry-run, no server, no Slurm, no Chromium, nothing slow).
# `make test` runs two pytest-xdist workers, one test file at a time each (tests/conftest.py): on 2 cores the Slurm
# run's and the servers' waits then overlap other files' work (docs/testing.md has the times). XDIST= runs them in
# one process.
FAST := not slow and not dag and not server and not cluster and not browser
XDIST ?= -n 2
test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) --durations=15 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "$(FAST)" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean-demo:
	rm -rf data/demo results/demo
