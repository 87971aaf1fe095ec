"""The ``zarrec`` command line: a thin layer over the library.

Every :class:`~zarrec.errors.ZarrecError` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from zarrec.errors import ZarrecError


def _train_parser(subparsers) -> None:
    from zarrec.config import DEVICES, DTYPES, INITS, TrainConfig

    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="train the reference byte-level GPT-2 and record every step",
        description="Train the reference experiment (offline, on a built-in corpus by default) and record it.",
    )
    parser.add_argument("--out", required=True, help="Zarr store to create (path or fsspec URL)")
    parser.add_argument("--corpus", help="text file to train on (non-ASCII bytes dropped); default: Python's pydoc topics")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (default %(default)s)")
    parser.add_argument("--device", choices=DEVICES, default=defaults.device, help="default %(default)s")
    parser.add_argument("--dtype", choices=DTYPES, default=defaults.dtype, help="training dtype (default %(default)s)")
    parser.add_argument("--init", choices=INITS, default=defaults.init, help="embedding initialisation (default %(default)s)")
    parser.add_argument("--every", type=int, default=defaults.every, help="record every N-th step (default %(default)s)")
    parser.add_argument("--chunk-steps", type=int,
                        help="recorded steps per Zarr chunk (default: about 16 MB per chunk, 512 for the reference run)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default %(default)s")
    parser.add_argument("--gradient-accumulation", type=int, default=defaults.gradient_accumulation,
                        help="default %(default)s")
    parser.add_argument("--context", type=int, default=defaults.context, help="sequence length (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="default %(default)s")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> None:
    from zarrec.config import TrainConfig
    from zarrec.experiment import train

    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{name: value for name, value in vars(args).items() if name in fields})
    summary = train(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print("\n".join(summary.lines()))


def _info_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="what a store holds: steps, variables, sizes, tokens, loss, hyperparameters")
    parser.add_argument("store", help="path or URL of a zarrec store")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(run=_info)


def _info(args: argparse.Namespace) -> None:
    from zarrec.summary import summarize

    summary = summarize(args.store)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.report())


def _plot_parser(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="write the standard figures of a run as PNG files")
    parser.add_argument("store", help="path or URL of a zarrec store")
    parser.add_argument("--out", required=True, help="directory for the PNG files (created if missing)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_plot)


def _plot(args: argparse.Namespace) -> None:
    import xarray as xr

    from zarrec.plots import save_all
    from zarrec.summary import open_run

    open_run(args.store)  # a clear error for a path that is not a zarrec store
    written, skipped = save_all(xr.open_zarr(args.store), args.out, progress=not args.quiet)
    for path in written:
        print(path)
    for reason in skipped:
        print(f"skipped {reason}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zarrec", description="Record every training step into Zarr; analyse with xarray.")
    subparsers = parser.add_subparsers(title="commands", required=True)
    _train_parser(subparsers)
    _info_parser(subparsers)
    _plot_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ZarrecError as error:
        print(f"zarrec: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
