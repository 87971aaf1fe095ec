"""Whole-run answers on long runs: how long they take from opening the store, and what they read.

Three stores of STEPS optimizer steps:

- ``default``: the reference model (byte-level GPT-2, 28 parameters, bf16) trained by a plain
  loop and recorded as zarrec records by default: the embedding's full state and the health
  statistics of every parameter at every step;
- ``full_state``: the same run recorded with every parameter's full state (``params="*"``);
- ``gpt2_small``: GPT-2 small's shapes (``GPT2Config()``: 148 parameters, a 50257×768
  embedding, 124 M entries) recorded by default for 3 steps, then its arrays resized to STEPS
  steps: the shards of the steps after 3 are empty (they read as NaN), so what is measured is
  what a reader's graph and memory make of a store of that length and layout, not training.

Each question runs in a fresh process, timed from ``xr.open_zarr`` to its computed answer, with
the bytes it read (``/proc/self/io`` ``rchar``, counted after the reading libraries are
imported) against the store's size on disk, and the process's peak memory (``VmHWM``):

- ``by_parameter``: ``ds.zarrec.by_parameter()`` (every parameter, every step: the statistics);
- ``realized_fraction``: ``ds.zarrec.realized_fraction(p).overall`` (statistics);
- ``realized_fraction_full_state``: the same from the full state (the dataset without its
  store's statistics), for contrast;
- ``speed_of_one_token``: ``ds.zarrec.speed().sel(token=101)`` (the full state);
- ``one_token_by_zarr``: the floor under it, zarr-python alone reading that token's rows of
  every step (``zarr.open_array(...)[:, 101]``: each step's shard, one inner chunk of it);
- ``plot``: ``zarrec plot`` (every standard figure).

    python benchmarks/long_reads.py                  # 10,000 steps, every store (~25 min on 2 CPU cores)
    python benchmarks/long_reads.py --stores default # one of them
    python benchmarks/long_reads.py --quick          # a smoke run: the default store, 50 steps (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()

QUESTIONS = {
    "by_parameter": "ds.zarrec.by_parameter().compute()",
    "realized_fraction": "ds.zarrec.realized_fraction().overall.compute()",
    "realized_fraction_full_state": "full_state_only(ds).zarrec.realized_fraction().overall.compute()",
    "speed_of_one_token": "ds.zarrec.speed().sel(token=101).compute()",
    "one_token_by_zarr": "zarr.open_array(f'{path}/embeddings', mode='r')[:, 101]",
    "plot": "plot(path)",
}
STORES = {
    "default": ["by_parameter", "realized_fraction", "realized_fraction_full_state", "speed_of_one_token", "plot"],
    "full_state": ["by_parameter", "realized_fraction", "plot"],
    "gpt2_small": ["by_parameter", "realized_fraction", "speed_of_one_token", "one_token_by_zarr"],
}


def record(out: str, steps: int, params: str | None = None) -> float:
    """The reference model trained by a plain loop on the built-in corpus (batch 4 × 32), recorded
    by default (or with ``params``); returns the seconds it took."""
    import torch

    import zarrec
    from zarrec.reference.config import TrainConfig
    from zarrec.reference.corpus import load_corpus
    from zarrec.reference.model import build_model

    config = TrainConfig()
    model = build_model(config)
    data = torch.from_numpy(load_corpus(None, config.vocab_size).tokens[: 4 * 32 * 64].astype("int64")).reshape(-1, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    start = time.perf_counter()
    options = {} if params is None else {"params": params}
    with zarrec.ModelRecorder(out, model, optimizer, overwrite=True, **options) as recorder:
        for step in range(steps):
            batch = data[(4 * step) % len(data):][:4]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            recorder.step(loss=loss)
            optimizer.zero_grad()
    return time.perf_counter() - start


def record_gpt2_small(out: str, steps: int) -> float:
    """GPT-2 small's shapes recorded by default for 3 steps (batch 1 × 16 of random tokens), then
    every array of the store and of its statistics resized to ``steps`` steps: a store of that
    length and layout whose later shards are empty."""
    import numpy as np
    import torch
    import transformers
    import zarr

    import zarrec

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    with zarrec.ModelRecorder(out, model, optimizer, overwrite=True) as recorder:
        for _ in range(min(3, steps)):
            batch = torch.randint(0, model.config.vocab_size, (1, 16))
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            recorder.step(loss=loss)
            optimizer.zero_grad()
    for where in (out, f"{out}/statistics"):
        group = zarr.open_group(where, use_consolidated=False)
        for name, array in group.arrays():
            if array.metadata.dimension_names and array.metadata.dimension_names[0] == "step" and name != "step":
                array.resize((steps, *array.shape[1:]))
        group["step"].resize((steps,))
        group["step"][:] = np.arange(steps)
        zarr.consolidate_metadata(where)
    return time.perf_counter() - start


def ask(out: str, question: str) -> dict:
    """In this (fresh) process: open the store, answer ``question``, time it, count the bytes read
    (after importing what reads them) and the peak memory."""
    def read_bytes() -> int:
        return int(Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])

    import tempfile

    import matplotlib.pyplot as plt
    import xarray as xr
    import zarr

    from zarrec.analysis import plots  # (and the accessor; imported before counting)
    from zarrec.cli import main as cli

    assert plt and plots

    def full_state_only(ds):
        copy = ds.copy()
        copy.encoding = {}
        return copy

    def plot(path):
        with tempfile.TemporaryDirectory() as figures:
            cli(["plot", path, "--out", figures, "--quiet"])

    before, start = read_bytes(), time.perf_counter()
    ds = xr.open_zarr(out)
    eval(QUESTIONS[question], {"ds": ds, "zarr": zarr, "path": out, "full_state_only": full_state_only, "plot": plot})  # (our own expressions)
    seconds, read = time.perf_counter() - start, read_bytes() - before
    peak_kb = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
    return {"seconds": seconds, "bytes_read": read, "peak_mb": peak_kb / 1e3}


def store_bytes_read(out: str, question: str) -> tuple[float, float] | None:
    """MB that answering ``question`` reads from the store's own files, in all and of distinct
    bytes (``rchar`` also counts the libraries' files: matplotlib reads its 0.76 MB font file for
    every text it draws): from the calls of one run under ``strace``; None where it is missing."""
    if shutil.which("strace") is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".strace") as log:
        subprocess.run(["strace", "-f", "-y", "-e", "trace=openat,lseek,read,pread64", "-o", log.name, sys.executable,
                        str(HERE), "--ask", out, question], check=True, capture_output=True)
        ranges = _file_ranges_read(Path(log.name).read_text().splitlines(), str(Path(out).resolve()))
    total = sum(end - start for spans in ranges.values() for start, end in spans)
    return total / 1e6, sum(_covered(spans) for spans in ranges.values()) / 1e6


def _file_ranges_read(lines: list[str], root: str) -> dict[str, list[tuple[int, int]]]:
    """The byte ranges read from each file under ``root``, from ``strace -f -y`` lines (a call
    that another thread interrupts is printed in two parts, joined here by thread id)."""
    pending, position, ranges = {}, {}, {}
    for line in lines:
        thread, call = (line.split(None, 1) + [""])[:2]
        if call.endswith("<unfinished ...>"):
            pending[thread] = call.removesuffix("<unfinished ...>")
            continue
        if call.startswith("<..."):
            call = pending.pop(thread, "") + call.split("resumed>", 1)[1]
        done = re.match(r"(\w+)\((\d+)<([^>]*)>(.*)\) += (-?\d+)", call)
        opened = re.match(r"openat\(.*\) += (\d+)<([^>]*)>", call)
        if opened:
            position[opened.group(1)] = 0
        if not done or not done.group(3).startswith(root) or int(done.group(5)) < 0:
            continue
        name, fd, path, arguments, result = done.groups()
        if name == "lseek":
            position[fd] = int(result)
        elif name == "read":
            start = position.get(fd, 0)
            position[fd] = start + int(result)
            ranges.setdefault(path, []).append((start, start + int(result)))
        elif name == "pread64":
            start = int(arguments.rsplit(",", 1)[1])
            ranges.setdefault(path, []).append((start, start + int(result)))
    return ranges


def _covered(spans: list[tuple[int, int]]) -> int:
    """Bytes in the union of ``spans``."""
    covered, reach = 0, 0
    for start, end in sorted(spans):
        covered += max(0, end - max(start, reach))
        reach = max(reach, end)
    return covered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--stores", default=",".join(STORES), help="which stores (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of 50 steps")
    parser.add_argument("--json", default="long_reads_results.json")
    parser.add_argument("--ask", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ask:
        print(json.dumps(ask(*args.ask)))
        return 0
    if args.quick:
        args.steps, args.stores = 50, "default"
    repeats = 1 if args.quick else 3
    results = {"steps": args.steps, "stores": {}}
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix="zarrec-long-") as scratch:
            out = str(Path(scratch) / "run.zarr")
            seconds = (record_gpt2_small(out, args.steps) if store == "gpt2_small"
                       else record(out, args.steps, "*" if store == "full_state" else None))
            size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
            rows = []
            for question in STORES[store]:
                runs = [json.loads(subprocess.run([sys.executable, str(HERE), "--ask", out, question], check=True,
                                                  capture_output=True, text=True).stdout.splitlines()[-1])
                        for _ in range(repeats)]
                median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
                store_read = store_bytes_read(out, question) if not args.quick or question == "by_parameter" else None
                rows.append({"question": question, "code": QUESTIONS[question], "seconds": median["seconds"],
                             "bytes_read_mb": median["bytes_read"] / 1e6,
                             "store_bytes_read_mb": store_read and store_read[0],
                             "distinct_store_bytes_read_mb": store_read and store_read[1],
                             "peak_mb": median["peak_mb"], "store_mb": size / 1e6})
                print(store, rows[-1], file=sys.stderr)
            results["stores"][store] = {"recording_seconds": seconds, "questions": rows}
    Path(args.json).write_text(json.dumps(results, indent=2))
    print("| store | question | code | seconds (median of 3) | MB read (rchar) | MB of the store read | of it distinct "
          "| store MB | peak MB |\n|---|---|---|---|---|---|---|---|---|")
    for store, result in results["stores"].items():
        for row in result["questions"]:
            store_read = ("- | -" if row["store_bytes_read_mb"] is None else
                          f"{row['store_bytes_read_mb']:.1f} | {row['distinct_store_bytes_read_mb']:.1f}")
            print(f"| {store} | {row['question']} | `{row['code']}` | {row['seconds']:.2f} | {row['bytes_read_mb']:.1f} "
                  f"| {store_read} | {row['store_mb']:.1f} | {row['peak_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
