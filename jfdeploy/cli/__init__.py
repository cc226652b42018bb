"""The ``jfdeploy`` command.

    jfdeploy run VIDEO_OR_FOLDER --mask FIRST_MASK.png --out masks/ [--checkpoint CKPT]
    jfdeploy demo --out demo/          # a generated clip, end to end, random weights
    jfdeploy serve --port 8000         # HTTP / WebSocket server for many streams at once
    jfdeploy info                      # versions, devices, optional backends present

Every verb keeps one contract: an error a user can cause ends in one line on stderr (no traceback)
and exit status 2 (bad input or configuration; 1 where a check or comparison found a difference);
options are checked when parsed or before anything is loaded; SIGINT / SIGTERM remove whatever the
command was writing and exit 130 / 143 (``jfdeploy.errors.exit_status``, ``jfdeploy.fsutil``).
"""

from __future__ import annotations

import argparse
import sys

from jfdeploy import fsutil
from jfdeploy.cli import bench, evaluation, export, info, run, serve
from jfdeploy.cli.common import Parser, given_options
from jfdeploy.errors import EXIT_USAGE, exit_status

# one small function per verb, in the order --help lists them
VERBS = (
    run.add_run_parser,
    run.add_demo_parser,
    run.add_run_many_parser,
    export.add_export_parser,
    export.add_check_parser,
    bench.add_bench_parser,
    evaluation.add_eval_parser,
    evaluation.add_compare_parser,
    export.add_build_parser,
    export.add_kernels_parser,
    serve.add_serve_parser,
    info.add_info_parser,
)


def build_parser() -> argparse.ArgumentParser:
    from jfdeploy import __version__

    parser = Parser(
        prog="jfdeploy",
        description="JointFormer video object segmentation: run, deploy and benchmark. Exit status: 0 success, "
        "1 a check or comparison found a difference (or some videos / sequences of a batch failed), 2 bad input "
        "or configuration, 130 / 143 interrupted (SIGINT / SIGTERM: unfinished output is removed).",
    )
    parser.add_argument("--version", action="version", version=f"jfdeploy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_verb in VERBS:
        add_verb(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with ``given``: the options it set explicitly (a default repeated counts)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.given = given_options(build_parser(), argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error a user can cause becomes one line on stderr and its exit status.

    The command runs in ``fsutil.command_scope``: SIGTERM raises like Ctrl-C, and on any failure what
    it was writing is removed. Statuses (``jfdeploy.errors``): 0 success, 1 a difference found, 2 bad
    input or configuration, 128 + signal when interrupted (130 SIGINT, 143 SIGTERM).
    """
    try:
        args = parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error (already printed on one line)
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    try:
        with fsutil.command_scope():
            args.handler(args)
    except BaseException as exc:
        status = exit_status(exc)
        if isinstance(exc, ModuleNotFoundError) and exc.name == "torch":  # the torch-free runtime install
            status = (EXIT_USAGE, "needs PyTorch (pip install torch); without it jfdeploy runs engine directories "
                                  "only: run / run-many / eval --engines DIR, VideoPredictor(engines=DIR)")  # fmt: skip
        if status is None:
            raise  # a bug: keep the traceback (the scope has already removed any unfinished output)
        code, message = status
        print(f"jfdeploy {args.command}: {'error: ' if code <= EXIT_USAGE else ''}{message}", file=sys.stderr)
        return code
    return 0
