"""Store format 2 (sharded along rows) beside format 1 (chunks whole along rows): writing and reading.

The same values are written in both layouts, in the same invocation, at the two ends of
the scale: the reference run's 128×64 embedding (8,192 steps, 512 a shard) and a GPT-2-small
embedding, 50257×768 (13 steps, one a shard). Format 2 is written by zarrec's own writer
(``RunStore.append``: whole shards, then the commit); format 1 by zarr-python in format 1's
layout (one chunk of every row per ``chunk_steps`` steps, arrays written concurrently, the
consolidated metadata committed after each chunk), as zarrec 0.1 wrote it. Every write and every
read runs in a fresh child process, formats interleaved (1 2 2 1 ...); medians are quoted.
Reads measure the bytes the process read (``rchar`` of ``/proc/self/io``), seconds and peak RSS
(VmHWM) above the child's own start.

    python benchmarks/store_layout.py --json benchmarks/layout_results.json   # ~10 min on 2 CPU cores
    python benchmarks/store_layout.py --quick                                   # smoke run (a test runs it)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
TOKEN = 464  # " the" in GPT-2's vocabulary; any row will do
SCALES = {  # name: (rows, cols, steps, steps per chunk)
    "128x64": (128, 64, 8192, 512),
    "50257x768": (50257, 768, 13, 1),
}
QUICK_SCALES = {"128x64": (128, 64, 64, 16), "5000x64": (5000, 64, 6, 2)}
VARIABLES = ("embeddings", "momentum", "variance")  # what speed() and realized_fraction() need, with lr
READS = {
    "token history": "ds.embeddings.sel(token={token}).values",
    "one whole step": "ds.embeddings.isel(step=-1).values",
    "speed() of one token": "ds.zarrec.speed().sel(token={token}).values",
    "realized_fraction().overall": "ds.zarrec.realized_fraction().overall.values",
}


def io_counters() -> tuple[int, int]:
    """(bytes read, peak RSS in bytes) of this process so far."""
    read = next(int(line.split()[1]) for line in open("/proc/self/io") if line.startswith("rchar"))
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return read, peak


def chunks_of(rows: int, cols: int, steps: int, chunk_steps: int):
    """The recorded values, ``chunk_steps`` steps at a time: a float32 random walk (what float32
    training state looks like to a compressor: it compresses about 1.1×), moments, an lr."""
    rng = np.random.default_rng(0)
    weights = (rng.normal(size=(rows, cols)) * 0.02).astype(np.float32)
    momentum = np.zeros_like(weights)
    variance = np.zeros_like(weights)
    for start in range(0, steps, chunk_steps):
        n = min(chunk_steps, steps - start)
        block = {name: np.empty((n, rows, cols), np.float32) for name in VARIABLES}
        for row in range(n):
            grad = (rng.normal(size=(rows, cols)) * 1e-3).astype(np.float32)
            momentum = 0.9 * momentum + 0.1 * grad
            variance = 0.999 * variance + 0.001 * grad * grad
            weights = weights - 1e-3 * momentum / (np.sqrt(variance) + 1e-8)
            block["embeddings"][row], block["momentum"][row], block["variance"][row] = weights, momentum, variance
        block["lr"] = np.full(n, 1e-3, np.float32)
        yield np.arange(start, start + n), block


ATTRS = {"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "weight_decay": 0.0}


def write_format_2(path: Path, rows: int, cols: int, steps: int, chunk_steps: int) -> float:
    from zarrec import contract
    from zarrec.store import RunStore

    store = RunStore.create(path, attrs=ATTRS)
    for name in VARIABLES:
        store.create_variable(name, (rows, cols), ("token", "dim"), chunk_steps, {}, contract.default_compressor())
    store.create_variable("lr", (), (), chunk_steps, {}, contract.default_compressor())
    store.link_coordinates([*VARIABLES, "lr"])
    seconds = 0.0
    for step, block in chunks_of(rows, cols, steps, chunk_steps):
        start = time.perf_counter()
        store.append(step, block)
        seconds += time.perf_counter() - start
    store.finish()
    return seconds


def write_format_1(path: Path, rows: int, cols: int, steps: int, chunk_steps: int) -> float:
    """Format 1's layout, written as zarrec 0.1 did: arrays sized ahead, chunks written
    concurrently with zarr's async API, then the consolidated metadata."""
    import zarr
    from zarr.core.sync import sync

    from zarrec import contract

    group = zarr.open_group(path, mode="w", zarr_format=3, attributes={**ATTRS, contract.FORMAT_ATTR: 1})
    config = {"write_empty_chunks": True}
    arrays = {
        name: group.create_array(name, shape=(steps, rows, cols), chunks=(chunk_steps, rows, cols), dtype="float32",
                                 fill_value=np.nan, compressors=contract.default_compressor(),
                                 dimension_names=("step", "token", "dim"), config=config)
        for name in VARIABLES
    }
    for name, dtype in (("lr", "float32"), ("step", "int64")):
        arrays[name] = group.create_array(name, shape=(steps,), chunks=(chunk_steps,), dtype=dtype, fill_value=-1,
                                          compressors=contract.default_compressor(), dimension_names=("step",),
                                          config=config)
    for dim, size in (("token", rows), ("dim", cols)):
        group.create_array(dim, data=np.arange(size), dimension_names=(dim,))

    async def append(step, block):
        region = slice(int(step[0]), int(step[-1]) + 1)
        await asyncio.gather(*(arrays[n]._async_array.setitem(region, v) for n, v in {**block, "step": step}.items()))

    seconds = 0.0
    for step, block in chunks_of(rows, cols, steps, chunk_steps):
        start = time.perf_counter()
        sync(append(step, block))
        zarr.consolidate_metadata(path)
        seconds += time.perf_counter() - start
    return seconds


def child_write(args) -> dict:
    rows, cols, steps, chunk_steps = args.shape
    writer = write_format_2 if args.format == 2 else write_format_1
    seconds = writer(Path(args.path), rows, cols, steps, chunk_steps)
    files = [f for f in Path(args.path).rglob("*") if f.is_file()]
    raw = 4 * rows * cols * steps * len(VARIABLES)
    return {"seconds": seconds, "MB/s": raw / 1e6 / seconds, "bytes on disk": sum(f.stat().st_size for f in files),
            "files": len(files)}


def child_read(args) -> dict:
    import warnings

    import xarray as xr

    import zarrec  # noqa: F401  (the accessor)

    warnings.simplefilter("ignore")  # zarr's note that consolidated metadata is not in the v3 spec
    expression = READS[args.read].format(token=args.token)
    # Once to import what the read imports lazily (its files count in rchar), then measured.
    # zarr caches nothing, so the second read reads the same bytes (the OS's page cache is warm
    # for both formats alike).
    eval(expression, {"ds": xr.open_zarr(args.path).isel(step=slice(0, 2))})
    read0, peak0 = io_counters()
    start = time.perf_counter()
    ds = xr.open_zarr(args.path)
    eval(expression, {"ds": ds})
    seconds = time.perf_counter() - start
    read1, peak1 = io_counters()
    return {"bytes read": read1 - read0, "seconds": seconds, "peak RSS over start MB": (peak1 - peak0) / 1e6}


def child_graph(args) -> dict:
    """What 10,000 steps cost dask before any data: a format-2 array of that length, no shard written."""
    import warnings

    import xarray as xr
    import zarr

    import zarrec
    from zarrec.store import RunStore

    rows, cols, _, chunk_steps = args.shape
    store = RunStore.create(args.path, attrs=ATTRS)
    store.create_variable("embeddings", (rows, cols), ("token", "dim"), chunk_steps, {}, zarrec.contract.default_compressor())
    store.link_coordinates(["embeddings"])
    store.finish()
    steps = 10_000
    group = zarr.open_group(args.path, mode="r+")
    for name in ("embeddings", "step"):
        group[name].resize((steps, *group[name].shape[1:]))
    group["step"][:] = np.arange(steps)
    zarr.consolidate_metadata(args.path)
    warnings.simplefilter("ignore")
    result = {}
    start = time.perf_counter()
    ds = xr.open_zarr(args.path)
    result["open s"] = time.perf_counter() - start
    result["dask tasks of embeddings"] = len(ds.embeddings.data.__dask_graph__())
    for name, expression in (("token history s", "ds.embeddings.sel(token=T).values"),
                             ("speed() of one token s", "ds.zarrec.speed().sel(token=T).values")):
        start = time.perf_counter()
        eval(expression, {"ds": ds, "T": args.token})
        result[name] = time.perf_counter() - start
    return result


def run_child(*arguments: str) -> dict:
    completed = subprocess.run([sys.executable, str(HERE), "--child", *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def benchmark(scales: dict, rounds: int, scratch: Path) -> dict:
    results: dict = {}
    for scale, shape in scales.items():
        shape_args = ["--shape", *map(str, shape)]
        token = str(min(TOKEN, shape[0] - 1))
        order = [1, 2, 2, 1] * rounds
        writes: dict = {1: [], 2: []}
        for index, fmt in enumerate(order[: 2 * rounds]):
            path = scratch / f"{scale}-format{fmt}.zarr"
            shutil.rmtree(path, ignore_errors=True)
            writes[fmt].append(run_child("write", "--format", str(fmt), "--path", str(path), *shape_args))
            print(f"{scale} write format {fmt}: {writes[fmt][-1]['MB/s']:.0f} MB/s", file=sys.stderr, flush=True)
        reads: dict = {}
        for read in READS:
            for fmt in order[: 2 * rounds]:
                path = scratch / f"{scale}-format{fmt}.zarr"
                reads.setdefault(read, {1: [], 2: []})[fmt].append(
                    run_child("read", "--read", read, "--token", token, "--path", str(path)))
            print(f"{scale} {read}: {[r['bytes read'] for r in reads[read][2]]} vs {[r['bytes read'] for r in reads[read][1]]}",
                  file=sys.stderr, flush=True)
        graph_path = scratch / f"{scale}-graph.zarr"
        shutil.rmtree(graph_path, ignore_errors=True)
        graph = run_child("graph", "--token", token, "--path", str(graph_path), *shape_args)
        for fmt in (1, 2):
            shutil.rmtree(scratch / f"{scale}-format{fmt}.zarr", ignore_errors=True)
        shutil.rmtree(graph_path, ignore_errors=True)
        results[scale] = {"shape": shape, "write": writes, "read": reads, "graph at 10,000 steps": graph}
    return results


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def table(results: dict) -> str:
    lines = ["| embedding | what | format 1 | format 2 | format 1 / format 2 |", "|---|---|---|---|---|"]
    for scale, result in results.items():
        w1, w2 = result["write"][1], result["write"][2]
        lines.append(f"| {scale} | write MB/s | {median(w1, 'MB/s'):,.0f} | {median(w2, 'MB/s'):,.0f} | "
                     f"{median(w1, 'MB/s') / median(w2, 'MB/s'):.2f} (format 2: {median(w2, 'MB/s') / median(w1, 'MB/s'):.2f}×) |")
        lines.append(f"| {scale} | bytes on disk, files | {median(w1, 'bytes on disk'):,.0f}, {median(w1, 'files'):.0f} | "
                     f"{median(w2, 'bytes on disk'):,.0f}, {median(w2, 'files'):.0f} | |")
        for read, runs in result["read"].items():
            b1, b2 = median(runs[1], "bytes read"), median(runs[2], "bytes read")
            s1, s2 = median(runs[1], "seconds"), median(runs[2], "seconds")
            m1, m2 = median(runs[1], "peak RSS over start MB"), median(runs[2], "peak RSS over start MB")
            lines.append(f"| {scale} | {read}: bytes read, s, peak RSS MB | {b1:,.0f}, {s1:.3f}, {m1:,.0f} | "
                         f"{b2:,.0f}, {s2:.3f}, {m2:,.0f} | {b1 / max(b2, 1):.1f}× bytes, {s1 / s2:.1f}× s |")
        graph = ", ".join(f"{k} {v:,.3g}" for k, v in result["graph at 10,000 steps"].items())
        lines.append(f"| {scale} | format 2 at 10,000 steps (no data) | | {graph} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each format")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--child", choices=["write", "read", "graph"], help=argparse.SUPPRESS)
    parser.add_argument("--format", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--read", choices=list(READS), help=argparse.SUPPRESS)
    parser.add_argument("--token", type=int, default=TOKEN, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"write": child_write, "read": child_read, "graph": child_graph}[args.child](args)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        results = benchmark(QUICK_SCALES if args.quick else SCALES, 1 if args.quick else args.rounds, Path(scratch))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
