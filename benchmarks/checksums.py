"""What the CRC32C of every inner chunk costs to write.

Since store format 2's inner chunks carry a checksum (the ``crc32c`` codec after the
compressor), every reader refuses a damaged chunk. This measures the price on the write
path: zarrec's own shard writer (:class:`zarrec.store.shards.ShardWriter`: compress every
inner chunk, checksum it, assemble the shard, one store write) writing the same float32
random walk (as :mod:`store_layout` makes it) into arrays sharded as zarrec shards them, once
with the checksum and once without (as stores written before it are). Writes alternate
(with, without; without, with; ...), the disk synced before each; the median of the pairs'
throughput ratios is quoted, since the machine's speed drifts. That end-to-end ratio moves by
±10 % from pair to pair on a shared machine, more than the checksum costs; so the CPU time
is also measured apart, on the same inner chunks: compressing them (as the writer does, one
thread) against computing their CRC32C, each in process CPU seconds.

    python benchmarks/checksums.py --json benchmarks/checksums_results.json                       # ~3 min on 2 CPU cores
    python benchmarks/checksums.py --scratch /dev/shm --json benchmarks/checksums_results_shm.json  # in memory
    python benchmarks/checksums.py --quick                                     # smoke run (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from store_layout import make_values
from zarr.codecs import Crc32cCodec

from zarrec.store import contract
from zarrec.store.shards import AssemblyBuffer, ShardWriter

SCALES = {"128x64": (128, 64, 8192, 512), "50257x768": (50257, 768, 6, 1)}  # rows, cols, steps, steps per chunk
QUICK_SCALES = {"128x64": (128, 64, 256, 64), "5000x64": (5000, 64, 4, 1)}


def create(path: Path, rows: int, cols: int, chunk_steps: int, checksum: bool) -> zarr.Array:
    """An empty array sharded as zarrec shards an embedding-like variable, with or without the checksum."""
    steps = contract.shard_steps(chunk_steps, 4 * rows * cols)
    inner_rows = contract.inner_chunk_rows(steps, rows, 4 * cols)
    compressor = contract.default_compressor()
    return zarr.create_array(
        str(path), shape=(0, rows, cols), chunks=(steps, inner_rows, cols),
        shards=(steps, -(-rows // inner_rows) * inner_rows, cols), dtype="float32", fill_value=np.nan,
        compressors=contract.checksummed(compressor) if checksum else compressor, zarr_format=3,
    )


def write(path: Path, values: np.ndarray, chunk_steps: int, checksum: bool) -> float:
    """Seconds to write ``values`` as whole shards (the array's metadata excluded: it is the same either way)."""
    from zarr.core.sync import sync

    array = create(path, *values.shape[1:], chunk_steps, checksum)
    assert any(isinstance(c, Crc32cCodec) for c in array.metadata.codecs[0].codecs) == checksum
    writer, buffer = ShardWriter(array.store_path, array.metadata), AssemblyBuffer()
    shard_steps = writer.shard[0]
    start = time.perf_counter()
    for first in range(0, len(values), shard_steps):
        sync(writer.write(first, values[first:first + shard_steps], buffer))
    return time.perf_counter() - start


def cpu_seconds(values: np.ndarray, rows: int, cols: int, chunk_steps: int, repeats: int = 5) -> dict:
    """CPU seconds to compress the inner chunks of ``values`` and to checksum what that made."""
    import google_crc32c

    from zarrec.store.shards import numcodecs_compressor

    steps = contract.shard_steps(chunk_steps, 4 * rows * cols)
    inner_rows = contract.inner_chunk_rows(steps, rows, 4 * cols)
    compressor = numcodecs_compressor(contract.default_compressor())
    chunks = [np.ascontiguousarray(values[s:s + steps, r:r + inner_rows])
              for s in range(0, len(values), steps) for r in range(0, rows, inner_rows)]
    start = time.process_time()
    compressed = [compressor.encode(chunk) for chunk in chunks]
    compressing = time.process_time() - start
    start = time.process_time()
    for _ in range(repeats):
        for data in compressed:
            google_crc32c.value(data)
    checksumming = (time.process_time() - start) / repeats
    return {"compress s": compressing, "crc32c s": checksumming, "crc32c / compress": checksumming / compressing,
            "compressed / raw": sum(map(len, compressed)) / values.nbytes}


def benchmark(scales: dict, pairs: int, scratch: Path) -> dict:
    results = {}
    for scale, (rows, cols, steps, chunk_steps) in scales.items():
        make_values(scratch / scale, rows, cols, steps)
        values = np.array(np.load(scratch / scale / "embeddings.npy"))
        shutil.rmtree(scratch / scale)
        runs: dict = {"with": [], "without": []}
        for pair in range(pairs):
            for kind in ("with", "without") if pair % 2 == 0 else ("without", "with"):
                path = scratch / f"{scale}-{kind}.zarr"
                shutil.rmtree(path, ignore_errors=True)
                os.sync()  # the previous write's dirty pages are on disk: no write-back competes with this one
                seconds = write(path, values, chunk_steps, kind == "with")
                runs[kind].append(values.nbytes / 1e6 / seconds)
                print(f"{scale} {kind} checksums: {runs[kind][-1]:.0f} MB/s", file=sys.stderr, flush=True)
        ratios = [with_ / without for with_, without in zip(runs["with"], runs["without"])]
        results[scale] = {
            "shape": [rows, cols, steps, chunk_steps], "MB/s": runs, "cpu": cpu_seconds(values, rows, cols, chunk_steps),
            "median MB/s with": statistics.median(runs["with"]), "median MB/s without": statistics.median(runs["without"]),
            "median ratio": statistics.median(ratios),
        }
        for kind in ("with", "without"):
            shutil.rmtree(scratch / f"{scale}-{kind}.zarr", ignore_errors=True)
    return results


def table(results: dict) -> str:
    lines = ["| scale | MB/s without | MB/s with checksums | ratio (median of pairs) | CPU: crc32c / compression |",
             "|---|---|---|---|---|"]
    for scale, r in results.items():
        lines.append(f"| {scale} | {r['median MB/s without']:.0f} | {r['median MB/s with']:.0f} | {r['median ratio']:.3f} "
                     f"| {100 * r['cpu']['crc32c / compress']:.1f} % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, two pairs (a smoke run)")
    parser.add_argument("--pairs", type=int, default=8, help="alternating pairs of writes")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--scratch", help="where the stores are written (default: the temporary directory; "
                        "/dev/shm leaves the disk's noise out, the cost is CPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zarrec-checksums-", dir=args.scratch) as scratch:
        results = benchmark(QUICK_SCALES if args.quick else SCALES, 2 if args.quick else args.pairs, Path(scratch))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
