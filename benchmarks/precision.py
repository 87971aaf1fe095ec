"""The precision lever: bytes on disk, and the error, of float32 training state rounded to fewer mantissa bits.

The values are ``store_layout.py``'s float32 random walk with its Adam moments (what float32
training state looks like to a compressor: it compresses about 1.1× exactly), at the reference
run's 128×64 (512 steps, one shard) and a GPT-2-small embedding, 50257×768 (6 steps, one a
shard). Each is written by zarrec's writer (``RunStore.append``, the default codec) exact and
rounded to 10 and to 7 mantissa bits (``zarrec.record.rounding.round_mantissa``, what
``Recorder(mantissa_bits=...)`` does before compressing), in the same invocation. Reported: bytes
on disk of the three arrays, the compression ratio, and the largest relative error
``|stored − x| / |x|`` over every nonzero value. Bytes and errors are deterministic: one run.

    python benchmarks/precision.py --json benchmarks/precision_results.json   # ~2 min on 2 CPU cores
    python benchmarks/precision.py --quick                                     # smoke run (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from store_layout import ATTRS, VARIABLES, chunks_of, make_values  # noqa: E402  (the same values)

SCALES = {"128x64": (128, 64, 512, 512), "50257x768": (50257, 768, 6, 1)}  # rows, cols, steps, steps a shard
QUICK_SCALES = {"128x64": (128, 64, 32, 16)}
BITS = (None, 10, 7)


def write(path: Path, values: Path, rows: int, cols: int, chunk_steps: int, bits: int | None) -> dict:
    """Write the values rounded to ``bits`` (None: exact); bytes on disk and the largest relative error."""
    from zarrec.store import contract
    from zarrec.record.rounding import round_mantissa
    from zarrec.store.run_store import RunStore

    store = RunStore.create(path, attrs=ATTRS)
    for name in VARIABLES:
        store.create_variable(name, (rows, cols), ("token", "dim"), chunk_steps, {}, contract.default_compressor())
    store.link_coordinates(list(VARIABLES))
    worst = 0.0
    for step, block in chunks_of(values, chunk_steps):
        block.pop("lr")
        for name, exact in block.items():
            rounded = round_mantissa(exact.copy(), bits) if bits is not None else exact
            nonzero = exact != 0
            worst = max(worst, float(np.max(np.abs(rounded[nonzero] - exact[nonzero]) / np.abs(exact[nonzero]))))
            block[name] = rounded
        store.append(step, block)
    store.finish()
    stored = sum(f.stat().st_size for name in VARIABLES for f in (path / name / "c").rglob("*") if f.is_file())
    raw = 4 * rows * cols * len(np.load(values / "embeddings.npy", mmap_mode="r")) * len(VARIABLES)
    return {"bits": bits, "bytes on disk": stored, "compression": raw / stored, "max relative error": worst}


def table(results: dict) -> str:
    lines = ["| embedding | mantissa bits | bytes on disk | compression | vs exact | max relative error |",
             "|---|---|---|---|---|---|"]
    for scale, runs in results.items():
        exact = runs[0]["bytes on disk"]
        for run in runs:
            bits = "exact (23)" if run["bits"] is None else str(run["bits"])
            lines.append(f"| {scale} | {bits} | {run['bytes on disk']:,} | {run['compression']:.2f}× | "
                         f"{exact / run['bytes on disk']:.2f}× smaller | {run['max relative error']:.2e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small shape (a smoke run)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for scale, (rows, cols, steps, chunk_steps) in (QUICK_SCALES if args.quick else SCALES).items():
            values = Path(scratch) / f"{scale}-values"
            make_values(values, rows, cols, steps)
            results[scale] = [write(Path(scratch) / f"{scale}-{bits}.zarr", values, rows, cols, chunk_steps, bits)
                              for bits in BITS]
            print(f"{scale}: {[run['bytes on disk'] for run in results[scale]]}", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
