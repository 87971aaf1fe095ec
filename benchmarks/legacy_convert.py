"""Memory and time of `zarrec import` / `zarrec export` on a reference-sized notebook file.

Baselines, measured in the same invocation: loading the whole file with
``safetensors.torch.load_file`` and reading every value (what analysing it took before), and loading it then writing it
with ``save_file`` (the notebook's way of producing it). Each case runs in a fresh child
process, which reports its own peak RSS; ``--repeats`` rounds are interleaved, medians quoted.

    python benchmarks/legacy_convert.py                 # 10,001 steps (1.3 GB file), ~5 min on 2 cores
    python benchmarks/legacy_convert.py --quick         # 200 steps, a smoke run (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB, DIM = 128, 64


def make_file(path: Path, steps: int) -> None:
    """A file in the notebook's layout whose values are bf16 ones stored as float32, as the notebook's were."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)

    def values(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(torch.bfloat16).float()

    tensors = {
        "recorded_steps": torch.arange(steps),
        "dead_token_ids": torch.arange(77, VOCAB),
        "live_token_ids": torch.arange(77),
        **{key: values(steps, VOCAB, DIM) for key in ("embeddings", "grads", "momentum", "variance")},
        "logits": values(steps, VOCAB),
        "losses": values(steps),
        **{key: torch.tensor(value) for key, value in
           (("init_sigma", 1e-5), ("learning_rate", 1e-3), ("weight_decay", 0.01), ("adam_beta1", 0.9), ("adam_beta2", 0.999))},
        "init_method_code": torch.tensor(0, dtype=torch.int32),
    }
    save_file(tensors, path)


def child(case: str, source: str, target: str) -> None:
    """Run one case in this process and print its wall time and peak RSS as JSON."""
    from safetensors.torch import load_file, save_file

    from zarrec.legacy import export_legacy, import_legacy

    start = time.perf_counter()
    if case == "load_file":
        tensors = load_file(source)  # memory-mapped: reading every value is what brings it into memory
        sum(float(tensor.double().sum()) for tensor in tensors.values())
    elif case == "load_and_save_file":
        save_file(load_file(source), target)
    elif case == "zarrec_import":
        import_legacy(source, target, overwrite=True, progress=False)
    elif case == "zarrec_export":
        export_legacy(source, target, overwrite=True, progress=False)
    elif case == "make_file":
        make_file(Path(target), int(source))
    elif case != "imports_only":
        raise SystemExit(f"unknown case {case}")
    seconds = time.perf_counter() - start
    print(json.dumps({"case": case, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it is not inherited from
    the parent across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: an upper bound


def run_child(case: str, source: Path | int, target: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", case, str(source), str(target)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_001)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 steps, one round")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "SOURCE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    steps, repeats = (200, 1) if args.quick else (args.steps, args.repeats)
    with tempfile.TemporaryDirectory(prefix="zarrec-legacy-bench-") as scratch:
        work = Path(scratch)
        legacy, store, back = work / "legacy.safetensors", work / "run.zarr", work / "back.safetensors"
        run_child("make_file", steps, legacy)  # in a child: the file's tensors never inflate this process
        rows = []
        for _ in range(repeats):
            rows.append(run_child("imports_only", legacy, work / "unused"))
            rows.append(run_child("load_file", legacy, work / "unused"))
            rows.append(run_child("load_and_save_file", legacy, work / "resaved.safetensors"))
            rows.append(run_child("zarrec_import", legacy, store))
            rows.append(run_child("zarrec_export", store, back))
        file_mb = legacy.stat().st_size / 2**20
        store_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
        shutil.rmtree(store)
    median = {case: {key: statistics.median(r[key] for r in rows if r["case"] == case) for key in ("seconds", "peak_rss_mb")}
              for case in dict.fromkeys(r["case"] for r in rows)}
    base = median["imports_only"]["peak_rss_mb"]
    print(f"Legacy conversion: {steps} steps, file {file_mb:.0f} MB, store {store_mb:.0f} MB, medians of {repeats}")
    print(f"{'case':<20} {'seconds':>8} {'peak RSS MB':>12} {'above imports':>14}")
    for case, m in median.items():
        print(f"{case:<20} {m['seconds']:>8.2f} {m['peak_rss_mb']:>12.0f} {m['peak_rss_mb'] - base:>14.0f}")
    ratios = {
        "import_rss_over_load_file": (median["zarrec_import"]["peak_rss_mb"] - base) / (median["load_file"]["peak_rss_mb"] - base),
        "export_rss_over_load_and_save": (median["zarrec_export"]["peak_rss_mb"] - base)
        / (median["load_and_save_file"]["peak_rss_mb"] - base),
        "import_time_over_load_and_save": median["zarrec_import"]["seconds"] / median["load_and_save_file"]["seconds"],
        "export_time_over_load_and_save": median["zarrec_export"]["seconds"] / median["load_and_save_file"]["seconds"],
    }
    for name, value in ratios.items():
        print(f"{name:<32} {value:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": steps, "file_mb": file_mb, "store_mb": store_mb,
                                               "rows": rows, "median": median, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
