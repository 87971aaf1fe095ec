"""Store format 2 (sharded along rows) beside format 1 (chunks whole along rows): writing and reading.

The same values are written in both layouts, in the same invocation, at the two ends of
the scale: the reference run's 128×64 embedding (8,192 steps, 512 a shard) and a GPT-2-small
embedding, 50257×768 (13 steps, one a shard). Format 2 is written by zarrec's own writer
(``RunStore.append``: whole shards, then the commit); format 1 by zarr-python in format 1's
layout (one chunk of every row per ``chunk_steps`` steps, arrays written concurrently, the
consolidated metadata committed after each chunk), as zarrec 0.1 wrote it. Every write and every
read runs in a fresh child process, formats interleaved (writes in pairs 1 2, 2 1, ..., from values
made once and read from disk, the disk synced before each; reads 1 2 2 1 ...); medians are quoted,
and for writes the median of the pairs' ratios, since the machine's speed drifts.
Reads measure the bytes the process read (``rchar`` of ``/proc/self/io``), seconds and peak RSS
(VmHWM, reset before the read) above the RSS before it.

    python benchmarks/store_layout.py --json benchmarks/layout_results.json   # ~20 min on 2 CPU cores
    python benchmarks/store_layout.py --quick                                   # smoke run (a test runs it)
    python benchmarks/store_layout.py --sections commit                         # the commit's metadata writes only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


def bytes_read() -> int:
    """Bytes this process has read so far (``rchar``: from files, whether or not the OS had them cached)."""
    return next(int(line.split()[1]) for line in open("/proc/self/io") if line.startswith("rchar"))


def memory(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of this process, in bytes."""
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))


def make_values(folder: Path, rows: int, cols: int, steps: int) -> None:
    """The recorded values, made once and kept as ``.npy`` files that every writer reads: a float32
    random walk (what float32 training state looks like to a compressor: it compresses about
    1.1×) with its Adam moments, and an lr."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32,
                                             shape=(steps, rows, cols)) for name in VARIABLES}
    rng = np.random.default_rng(0)
    weights = (rng.normal(size=(rows, cols)) * 0.02).astype(np.float32)
    momentum = np.zeros_like(weights)
    variance = np.zeros_like(weights)
    for step in range(steps):
        grad = (rng.normal(size=(rows, cols)) * 1e-3).astype(np.float32)
        momentum = 0.9 * momentum + 0.1 * grad
        variance = 0.999 * variance + 0.001 * grad * grad
        weights = weights - 1e-3 * momentum / (np.sqrt(variance) + 1e-8)
        files["embeddings"][step], files["momentum"][step], files["variance"][step] = weights, momentum, variance
    for array in files.values():
        array.flush()


def chunks_of(folder: Path, chunk_steps: int):
    """The values of :func:`make_values`, ``chunk_steps`` steps at a time, in memory."""
    files = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in VARIABLES}
    steps = len(files["embeddings"])
    for start in range(0, steps, chunk_steps):
        stop = min(start + chunk_steps, steps)
        block = {name: np.array(array[start:stop]) for name, array in files.items()}
        block["lr"] = np.full(stop - start, 1e-3, np.float32)
        yield np.arange(start, stop), block


ATTRS = {"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "weight_decay": 0.0}


def write_format_2(path: Path, values: Path, rows: int, cols: int, chunk_steps: int) -> float:
    from zarrec.store import contract
    from zarrec.store.run_store import RunStore

    store = RunStore.create(path, attrs=ATTRS)
    for name in VARIABLES:
        store.create_variable(name, (rows, cols), ("token", "dim"), chunk_steps, {}, contract.default_compressor())
    store.create_variable("lr", (), (), chunk_steps, {}, contract.default_compressor())
    store.link_coordinates([*VARIABLES, "lr"])
    seconds = 0.0
    for step, block in chunks_of(values, chunk_steps):
        start = time.perf_counter()
        store.append(step, block)
        seconds += time.perf_counter() - start
    store.finish()
    return seconds


def write_format_1(path: Path, values: Path, rows: int, cols: int, chunk_steps: int) -> float:
    """Format 1's layout, written as zarrec 0.1 did: arrays sized ahead, chunks written
    concurrently with zarr's async API, then the consolidated metadata."""
    import zarr
    from zarr.core.sync import sync

    from zarrec.store import contract

    steps = len(np.load(values / "embeddings.npy", mmap_mode="r"))
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
    for step, block in chunks_of(values, chunk_steps):
        start = time.perf_counter()
        sync(append(step, block))
        zarr.consolidate_metadata(path)
        seconds += time.perf_counter() - start
    return seconds


def child_write(args) -> dict:
    rows, cols, steps, chunk_steps = args.shape
    writer = write_format_2 if args.format == 2 else write_format_1
    seconds = writer(Path(args.path), Path(args.values), rows, cols, chunk_steps)
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
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS starts again from the RSS now
    read0, rss0 = bytes_read(), memory("VmRSS")
    start = time.perf_counter()
    ds = xr.open_zarr(args.path)
    eval(expression, {"ds": ds})
    seconds = time.perf_counter() - start
    return {"bytes read": bytes_read() - read0, "seconds": seconds, "peak RSS over start MB": (memory("VmHWM") - rss0) / 1e6}


def child_graph(args) -> dict:
    """What 10,000 steps cost dask before any data: a format-2 array of that length, no shard written."""
    import warnings

    import xarray as xr
    import zarr

    import zarrec
    from zarrec.store.run_store import RunStore

    rows, cols, _, chunk_steps = args.shape
    store = RunStore.create(args.path, attrs=ATTRS)
    store.create_variable("embeddings", (rows, cols), ("token", "dim"), chunk_steps, {}, zarrec.store.contract.default_compressor())
    store.link_coordinates(["embeddings"])
    store.finish()
    steps = args.graph_steps
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


def child_commit(args) -> dict:
    """What a commit's metadata writes cost: each array's zarr.json and the root's, against the
    root's alone (format 1's commit), for ``--arrays`` step-indexed arrays; seconds per commit."""
    from zarr.core.sync import sync

    from zarrec.store import contract
    from zarrec.store.run_store import RunStore

    store = RunStore.create(args.path, attrs=ATTRS)
    for index in range(args.arrays):
        store.create_variable(f"x{index}", (64, 64), (f"r{index}", f"c{index}"), 8, {}, contract.default_compressor())
    store.link_coordinates([f"x{index}" for index in range(args.arrays)])
    appender = store._open_appender()
    timings: dict = {"arrays and root": [], "root only": []}
    for rows in range(1, 101):
        for kind in ("arrays and root", "root only"):
            start = time.perf_counter()
            sync(appender.commit(rows if kind == "arrays and root" else appender.rows))
            timings[kind].append(time.perf_counter() - start)
    store.finish()
    return {kind: statistics.median(values) for kind, values in timings.items()}


def run_child(*arguments: str) -> dict:
    completed = subprocess.run([sys.executable, str(HERE), "--child", *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


def benchmark(scales: dict, rounds: int, write_pairs: int, scratch: Path, graph_steps: int) -> dict:
    results: dict = {}
    for scale, shape in scales.items():
        shape_args = ["--shape", *map(str, shape)]
        token = str(min(TOKEN, shape[0] - 1))
        values = scratch / f"{scale}-values"
        make_values(values, *shape[:3])
        writes: dict = {1: [], 2: []}
        for pair in range(write_pairs):
            for fmt in (1, 2) if pair % 2 == 0 else (2, 1):
                path = scratch / f"{scale}-format{fmt}.zarr"
                shutil.rmtree(path, ignore_errors=True)
                os.sync()  # the previous run's dirty pages are on disk: no write-back competes with this one
                writes[fmt].append(run_child("write", "--format", str(fmt), "--path", str(path), "--values", str(values),
                                             *shape_args))
                print(f"{scale} write format {fmt}: {writes[fmt][-1]['MB/s']:.0f} MB/s", file=sys.stderr, flush=True)
        shutil.rmtree(values)
        order = [1, 2, 2, 1] * rounds
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
        graph = run_child("graph", "--token", token, "--path", str(graph_path), "--graph-steps", str(graph_steps), *shape_args)
        for fmt in (1, 2):
            shutil.rmtree(scratch / f"{scale}-format{fmt}.zarr", ignore_errors=True)
        shutil.rmtree(graph_path, ignore_errors=True)
        results[scale] = {"shape": shape, "write": writes, "read": reads, f"graph at {graph_steps:,} steps": graph}
    return results


def commit_costs(scratch: Path, rounds: int) -> dict:
    """A commit's metadata writes with 6 arrays (the default recording) and 112 (the whole reference model)."""
    costs = {}
    for arrays in (6, 112):
        runs = []
        for round_ in range(rounds):
            path = scratch / f"commit{arrays}-{round_}.zarr"
            runs.append(run_child("commit", "--arrays", str(arrays), "--path", str(path)))
            shutil.rmtree(path, ignore_errors=True)
        costs[arrays] = {kind: statistics.median(run[kind] for run in runs) for kind in runs[0]}
    return costs


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def table(results: dict) -> str:
    lines = ["| embedding | what | format 1 | format 2 | format 1 / format 2 |", "|---|---|---|---|---|"]
    for scale, result in results.items():
        if scale == "commit":
            continue
        w1, w2 = result["write"][1], result["write"][2]
        pairs = statistics.median(b["MB/s"] / a["MB/s"] for a, b in zip(w1, w2))
        lines.append(f"| {scale} | write MB/s ({len(w1)} interleaved pairs) | {median(w1, 'MB/s'):,.0f} | "
                     f"{median(w2, 'MB/s'):,.0f} | format 2: {pairs:.2f}× (median of the pairs' ratios) |")
        lines.append(f"| {scale} | bytes on disk, files | {median(w1, 'bytes on disk'):,.0f}, {median(w1, 'files'):.0f} | "
                     f"{median(w2, 'bytes on disk'):,.0f}, {median(w2, 'files'):.0f} | |")
        for read, runs in result["read"].items():
            b1, b2 = median(runs[1], "bytes read"), median(runs[2], "bytes read")
            s1, s2 = median(runs[1], "seconds"), median(runs[2], "seconds")
            m1, m2 = median(runs[1], "peak RSS over start MB"), median(runs[2], "peak RSS over start MB")
            lines.append(f"| {scale} | {read}: bytes read, s, peak RSS MB | {b1:,.0f}, {s1:.3f}, {m1:,.0f} | "
                         f"{b2:,.0f}, {s2:.3f}, {m2:,.0f} | {b1 / max(b2, 1):.1f}× bytes, {s1 / s2:.1f}× s |")
        (key,) = (key for key in result if key.startswith("graph at"))
        graph = ", ".join(f"{k} {v:,.3g}" for k, v in result[key].items())
        lines.append(f"| {scale} | format 2 {key.removeprefix('graph ')} (no data) | | {graph} | |")
    for arrays, cost in results.get("commit", {}).items():
        lines.append(f"| {arrays} arrays | ms per commit (root only: format 1) | {1e3 * cost['root only']:.2f} | "
                     f"{1e3 * cost['arrays and root']:.2f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved reads of each format")
    parser.add_argument("--write-pairs", type=int, default=6, help="interleaved pairs of writes (1 2, 2 1, ...)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--sections", default="layout,commit", help="layout (write and read both formats), commit")
    parser.add_argument("--child", choices=["write", "read", "graph", "commit"], help=argparse.SUPPRESS)
    parser.add_argument("--arrays", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--graph-steps", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--values", help=argparse.SUPPRESS)
    parser.add_argument("--format", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--read", choices=list(READS), help=argparse.SUPPRESS)
    parser.add_argument("--token", type=int, default=TOKEN, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        children = {"write": child_write, "read": child_read, "graph": child_graph, "commit": child_commit}
        print(json.dumps(children[args.child](args)))
        return
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as scratch:
        scales, graph_steps = (QUICK_SCALES, 200) if args.quick else (SCALES, 10_000)
        pairs = 1 if args.quick else args.write_pairs
        results = benchmark(scales, rounds, pairs, Path(scratch), graph_steps) if "layout" in args.sections else {}
        if "commit" in args.sections:
            results["commit"] = commit_costs(Path(scratch), rounds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
