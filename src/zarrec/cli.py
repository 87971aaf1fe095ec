"""The ``zarrec`` command line: a thin layer over the library.

Every :class:`~zarrec.errors.ZarrecError` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from zarrec.errors import ConfigError, ZarrecError
from zarrec.record.shutdown import received_signal as shutdown_signal
from zarrec.record.shutdown import stop_reason
from zarrec.store.location import (
    ensure_creatable,
    ensure_known_protocol,
    ensure_resumable,
    local_directory,
)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"zarrec: error: {self.prog}: {message}; see {self.prog} --help\n")


def _train_parser(subparsers) -> None:
    from zarrec.reference.config import (
        DEVICES,
        DTYPES,
        INITS,
        OPTIMIZERS,
        STATISTICS,
        TrainConfig,
    )

    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="train the reference byte-level GPT-2 and record every step",
        description="Train the reference experiment (offline, on a built-in corpus by default) and record it. "
        "With --resume or --branch-from, options not given are those of the recorded run.",
    )
    parser.add_argument("--out", required=True, help="Zarr store to create (path or fsspec URL)")
    # Run settings default to None so that --resume can tell the options given from the recorded ones.
    run = parser.add_argument_group("the run (recorded in the store's 'config' attribute)")
    run.add_argument("--corpus", help="text file to train on (non-ASCII bytes dropped); default: Python's pydoc topics")
    run.add_argument("--steps", type=int, help=f"optimizer steps (default {defaults.steps})")
    run.add_argument("--device", choices=DEVICES, help=f"default {defaults.device}")
    run.add_argument("--dtype", choices=DTYPES, help=f"training dtype (default {defaults.dtype})")
    run.add_argument("--init", choices=INITS, help=f"embedding initialisation (default {defaults.init})")
    run.add_argument("--every", type=_schedule,
                     help=f"record every N-th step, or phases such as 1:1000,10 (every step up to 1000, then every "
                     f"10th) (default {defaults.every})")
    run.add_argument("--params", nargs="+", metavar="PATTERN",
                     help="parameters to record, glob patterns over their names, e.g. 'transformer.h.*.attn.*' "
                     "(default: the input embedding)")
    run.add_argument("--quantities", nargs="+", metavar="NAME",
                     help="of each parameter: param, grad and optimizer state keys such as exp_avg, exp_avg_sq, "
                     "momentum_buffer (default: all)")
    run.add_argument("--rows", metavar="TOKENS",
                     help="record only these rows of the embedding: 'live' (the corpus's tokens), a range such as "
                     "0:64, or ids such as 10,32,101 (default: all)")
    run.add_argument("--statistics", choices=STATISTICS,
                     help="health statistics of every parameter at every step: all (default), norms (no copy of the "
                          "parameters), none")
    run.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {defaults.optimizer}")
    run.add_argument("--probe", metavar="TEXT",
                     help="a fixed text whose logits are evaluated with the current weights at recorded steps")
    run.add_argument("--probe-positions", nargs="+", type=int, metavar="I",
                     help="positions of the probe to keep (negative: from the end; default: all)")
    run.add_argument("--probe-every", type=int, help="evaluate the probe at recorded steps divisible by N (default 1)")
    run.add_argument("--chunk-steps", type=int,
                     help="recorded steps per Zarr chunk (default: about 16 MB per chunk, 512 for the reference run)")
    run.add_argument("--mantissa-bits", type=int, metavar="BITS",
                     help="round recorded tensors to BITS mantissa bits (7: bfloat16's precision), stored as float32; "
                     "smaller on disk, not exact (default: exact)")
    run.add_argument("--batch-size", type=int, help=f"default {defaults.batch_size}")
    run.add_argument("--gradient-accumulation", type=int, help=f"default {defaults.gradient_accumulation}")
    run.add_argument("--context", type=int, help=f"sequence length (default {defaults.context})")
    run.add_argument("--seed", type=int, help=f"default {defaults.seed}")
    run.add_argument("--lr", type=float, dest="learning_rate",
                     help=f"peak learning rate, decayed linearly to 0 at --steps (default {defaults.learning_rate})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at --out (and its checkpoints)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out from its newest usable checkpoint")
    parser.add_argument("--branch-from", metavar="STORE",
                        help="start from a step of this run's store (recorded with --params '*'), with its settings "
                        "unless options say otherwise; --out records the steps after it")
    parser.add_argument("--branch-step", type=int, metavar="T", help="the recorded step of --branch-from to start after")
    parser.add_argument("--checkpoint-dir", help="where the Trainer saves checkpoints (default: <out>.checkpoints)")
    parser.add_argument("--save-steps", type=int, default=500, help="steps between checkpoints (default %(default)s)")
    parser.add_argument("--flush-every", type=int,
                        help="also commit every N recorded steps (default: at each chunk); bounds what a kill -9 loses")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_train)


@contextlib.contextmanager
def _printing_the_cost_line() -> Iterator[None]:
    """The cost line the recording logs at its first step (logger ``zarrec``) goes to stdout
    while the command runs."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("zarrec")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _schedule(text: str) -> int | str:
    """``--every``: a number stays a number (as recorded in the store's config), phases stay text."""
    return int(text) if text.strip().isdigit() else text


def _train(args: argparse.Namespace) -> None:
    from zarrec.reference.config import TrainConfig
    from zarrec.reference.train import (
        default_checkpoint_dir,
        recorded_config,
        refuse_resuming_a_branch,
        train,
    )

    for option in ("save_steps", "flush_every"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise ConfigError(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the store and --overwrite replaces it; pass one of them")
    refuse_resuming_a_branch(args.resume, args.branch_from)
    if (args.branch_from is None) != (args.branch_step is None):
        raise ConfigError("a branch needs both --branch-from (the recorded run) and --branch-step (its step to start after)")
    ensure_known_protocol(args.out)
    if local_directory(args.out) is not None:
        ensure_creatable(args.out, "--out")
    if args.checkpoint_dir is not None:
        ensure_creatable(args.checkpoint_dir, "--checkpoint-dir")
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    given = {name: value for name, value in vars(args).items() if name in fields and value is not None}
    given.update({name: tuple(given[name]) for name in ("params", "quantities", "probe_positions") if name in given})
    if args.resume:
        ensure_resumable(args.out)
    recorded = recorded_config(args.out) if args.resume else recorded_config(args.branch_from) if args.branch_from else {}
    config = TrainConfig(**{**recorded, **given})
    checkpoint_dir = args.checkpoint_dir or default_checkpoint_dir(args.out)
    with _printing_the_cost_line():
        summary = train(
            config, args.out, overwrite=args.overwrite, resume=args.resume, checkpoint_dir=checkpoint_dir,
            save_steps=args.save_steps, flush_every=args.flush_every, progress=not args.quiet,
            branch_from=args.branch_from, branch_step=args.branch_step,
        )
    if summary is not None:  # None in the processes of a multi-process launch that do not write
        print("\n".join(summary.lines()))


def _info_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="what a store holds: steps, variables, sizes, tokens, loss, hyperparameters")
    parser.add_argument("store", help="path or URL of a zarrec store")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(run=_info)


def _info(args: argparse.Namespace) -> None:
    from zarrec.analysis.summary import summarize

    summary = summarize(args.store)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.report())


def _verify_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="read every committed shard and check every byte: exit 0 when whole, 1 when damaged",
        description="Read every committed shard of every array (one at a time) and check it: present, its index and "
        "each inner chunk matching their CRC32C, each chunk decompressing; and the step coordinate's values. "
        "Prints one line per problem; exit status 0 when the store is whole, 1 when it is damaged, 2 on bad input.",
    )
    parser.add_argument("store", help="path or URL of a zarrec store")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_verify)


def _verify(args: argparse.Namespace) -> int:
    from zarrec.store.verify import verify

    problems = verify(args.store, progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps({"store": args.store, "whole": not problems, "problems": [p.to_dict() for p in problems]}, indent=2))
    elif problems:
        print("\n".join(problem.line() for problem in problems))
        print(f"{args.store}: damaged, {len(problems)} problems")
    else:
        print(f"{args.store}: whole, every committed shard checked")
    return 1 if problems else 0


def _plot_parser(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="write the standard figures of a run as PNG files")
    parser.add_argument("store", help="path or URL of a zarrec store")
    parser.add_argument("--out", required=True, help="directory for the PNG files (created if missing)")
    parser.add_argument("--param", action="append", metavar="NAME",
                        help="a recorded parameter to draw (repeatable; default: the input embedding); the "
                        "whole-model figure shows these only")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_plot)


def _plot(args: argparse.Namespace) -> None:
    import xarray as xr

    from zarrec.analysis.plots import save_all
    from zarrec.store.location import open_run

    open_run(args.store)  # a clear error for a path that is not a zarrec store
    written, skipped = save_all(xr.open_zarr(args.store), args.out, args.param, progress=not args.quiet)
    for path in written:
        print(path)
    for reason in skipped:
        print(f"skipped {reason}")


def _import_parser(subparsers) -> None:
    parser = subparsers.add_parser("import", help="convert a reference-notebook .safetensors recording into a store")
    parser.add_argument("source", help="the notebook's .safetensors file")
    parser.add_argument("out", help="Zarr store to create (path or fsspec URL)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at OUT")
    parser.add_argument("--renumber", action="store_true",
                        help="label the rows 0, 1, 2, ... (right when the notebook recorded every step; its own "
                        "labels run ahead after each epoch end)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_import)


def _import(args: argparse.Namespace) -> None:
    from zarrec.analysis.summary import summarize
    from zarrec.legacy import import_legacy

    import_legacy(args.source, args.out, overwrite=args.overwrite, renumber=args.renumber, progress=not args.quiet)
    print("\n".join(summarize(args.out).lines()))


def _export_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a store in the reference notebook's .safetensors layout")
    parser.add_argument("store", help="path or URL of a zarrec store")
    parser.add_argument("target", help="the .safetensors file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing TARGET")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> None:
    from zarrec.legacy import export_legacy

    export_legacy(args.store, args.target, overwrite=args.overwrite, progress=not args.quiet)
    print(args.target)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zarrec", description="Record every training step into Zarr; analyse with xarray.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    subparsers = parser.add_subparsers(title="commands", required=True)
    _train_parser(subparsers)
    _info_parser(subparsers)
    _verify_parser(subparsers)
    _plot_parser(subparsers)
    _import_parser(subparsers)
    _export_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
    except BrokenPipeError:  # the reader went away (zarrec info run.zarr | head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit fails quietly
        return 0
    except ZarrecError as error:
        if args.debug:
            raise
        print(f"zarrec: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit) as stop:
        if isinstance(stop, SystemExit) and not shutdown_signal():
            raise  # an ordinary exit, not a signal
        if args.debug:
            raise
        store = f"; what was recorded is in {args.out} (continue with --resume)" if args.run is _train else ""
        print(f"zarrec: stopped: {stop_reason(stop)}{store}", file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else stop.code
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
