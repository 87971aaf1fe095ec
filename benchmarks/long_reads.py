"""Whole-run answers on a long run: how long they take from opening the store, and what they read.

A plain loop records the reference model (byte-level GPT-2, 28 parameters, bf16) for STEPS
optimizer steps as zarrec records by default: the embedding's full state and the health
statistics of every parameter at every step. Each question then runs in a fresh process,
timed from ``xr.open_zarr`` to its computed answer, with the bytes it read (``/proc/self/io``
``rchar``) against the store's size on disk:

- ``by_parameter``: ``ds.zarrec.by_parameter()`` (every parameter, every step: the statistics);
- ``realized_fraction``: ``ds.zarrec.realized_fraction().overall`` of the embedding (statistics);
- ``realized_fraction_full_state``: the same from the embedding's full state (the dataset
  without its store's statistics), for contrast;
- ``speed_of_one_token``: ``ds.zarrec.speed().sel(token=101)`` (the full state).

    python benchmarks/long_reads.py                  # 10,000 steps (~6 min on 2 CPU cores)
    python benchmarks/long_reads.py --quick          # a smoke run of 50 steps (a test runs it)
"""

from __future__ import annotations

import argparse
import json
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
}


def record(out: str, steps: int) -> float:
    """The reference model trained by a plain loop on the built-in corpus (batch 4 × 32), recorded by default."""
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
    with zarrec.ModelRecorder(out, model, optimizer, overwrite=True) as recorder:
        for step in range(steps):
            batch = data[(4 * step) % len(data):][:4]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            recorder.step(loss=loss)
            optimizer.zero_grad()
    return time.perf_counter() - start


def ask(out: str, question: str) -> dict:
    """In this (fresh) process: open the store, answer ``question``, time it and count the bytes read."""
    def read_bytes() -> int:
        return int(next(line for line in open("/proc/self/io") if line.startswith("rchar")).split()[1])

    import xarray as xr

    import zarrec  # noqa: F401  (the accessor)

    def full_state_only(ds):
        copy = ds.copy()
        copy.encoding = {}
        return copy

    before, start = read_bytes(), time.perf_counter()
    ds = xr.open_zarr(out)
    eval(QUESTIONS[question], {"ds": ds, "full_state_only": full_state_only})  # (our own expressions)
    return {"seconds": time.perf_counter() - start, "bytes_read": read_bytes() - before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run of 50 steps")
    parser.add_argument("--json", default="long_reads_results.json")
    parser.add_argument("--ask", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ask:
        print(json.dumps(ask(*args.ask)))
        return 0
    if args.quick:
        args.steps = 50
    with tempfile.TemporaryDirectory(prefix="zarrec-long-") as scratch:
        out = str(Path(scratch) / "run.zarr")
        seconds = record(out, args.steps)
        size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
        rows = []
        for question in QUESTIONS:
            runs = [json.loads(subprocess.run([sys.executable, str(HERE), "--ask", out, question], check=True,
                                              capture_output=True, text=True).stdout.splitlines()[-1]) for _ in range(3)]
            median = sorted(runs, key=lambda r: r["seconds"])[1]
            rows.append({"question": question, "code": QUESTIONS[question], "seconds": median["seconds"],
                         "bytes_read_mb": median["bytes_read"] / 1e6, "store_mb": size / 1e6})
            print(rows[-1], file=sys.stderr)
    results = {"steps": args.steps, "recording_seconds": seconds, "questions": rows}
    Path(args.json).write_text(json.dumps(results, indent=2))
    print("| question | code | seconds (median of 3) | MB read | store MB |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['question']} | `{row['code']}` | {row['seconds']:.2f} | {row['bytes_read_mb']:.1f} | {row['store_mb']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
