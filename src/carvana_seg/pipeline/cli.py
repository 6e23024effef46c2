"""``python -m carvana_seg <stage> ...``: one subcommand per pipeline stage.

Each stage lives in its own module exposing ``add_arguments(parser)`` and ``run(args, cfg)``; modules are imported
only when their subcommand runs, so data stages never pay for importing torch. Settings come either as ``--cfg``
(the JSON slice Snakemake passes, see ``config.stage_config``) or as ``--configfile`` for direct use.
Errors derived from ``CarvanaSegError`` are printed as one line, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

# Before any stage imports torch (libgomp reads it once): OpenMP threads that spin while they wait turn a shared
# CPU into a 5-15x slowdown (a 35 s demo train job took 330-390 s beside other processes on 2 cores; passive:
# ~2x, i.e. fair share), for ~5-10 % on idle cores. An explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from carvana_seg.pipeline import config as cfgmod  # noqa: E402
from carvana_seg.pipeline.errors import CarvanaSegError  # noqa: E402
from carvana_seg.pipeline.stages import GPU_STAGES, STAGES  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m carvana_seg", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_module, slice_name, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_stage=name)
        if slice_name is not None:
            src = p.add_mutually_exclusive_group(required=True)
            src.add_argument("--cfg", help="JSON config slice (what Snakemake passes)")
            src.add_argument("--configfile", help="YAML config file (validated, defaults filled)")
    return parser


def _add_stage_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Let the chosen stage's module add its own arguments (imports only that module)."""
    stage = next((a for a in argv if a in STAGES), None)
    if stage is None:
        return
    module = importlib.import_module(STAGES[stage][0])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    module.add_arguments(sub.choices[stage])


def stage_cfg(args: argparse.Namespace) -> dict:
    """The validated config slice for this invocation, from ``--cfg`` or from ``--configfile``, every default
    filled from the schema (the one source of defaults: stages index it, they never carry defaults of their own)."""
    slice_name = STAGES[args._stage][1]  # noqa: SLF001
    if slice_name is None:
        return {}
    if args.cfg is None:
        full = cfgmod.load(args.configfile)
        return cfgmod.stage_config(full, slice_name, getattr(args, "variant", None))
    try:
        raw = json.loads(args.cfg)
    except json.JSONDecodeError as exc:
        raise CarvanaSegError(f"--cfg is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CarvanaSegError("--cfg must be a JSON object (the config slice of the stage)")
    return cfgmod.validate_slice(slice_name, raw)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if next((a for a in argv if a in STAGES), None) in GPU_STAGES:
            from carvana_seg.pipeline import gpu

            if gpu.wants_gpu(argv):
                gpu.claim_device()
        _add_stage_arguments(parser, argv)
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        module = importlib.import_module(STAGES[args._stage][0])  # noqa: SLF001
        module.run(args, stage_cfg(args))
    except CarvanaSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file-system refusal no stage translated: still one line, naming the final path
        from carvana_seg.pipeline import staging

        if exc.errno not in staging.WRITE_ERRNOS and exc.filename is None:
            raise
        where = f"{staging.public_path(exc.filename)}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
