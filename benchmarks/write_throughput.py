"""Write throughput, training overhead, memory and scaling of zarrec, each as a ratio to a baseline.

Every measurement runs in a fresh child process (so peak RSS is its own), and the
numbers that are compared run in the same invocation, interleaved and repeated;
medians are quoted. Results go to a JSON file and a markdown table on stdout.

    python benchmarks/write_throughput.py                 # the full run (~25 min on 2 CPU cores)
    python benchmarks/write_throughput.py --quick         # a smoke run in one process, under a minute
    python benchmarks/write_throughput.py --device cuda   # the same on an accelerator

Sections:
  synthetic  reference-shaped and whole-model streams into zarrec, beside the bare codec
  training   the reference HF Trainer loop: no recording, the notebook's in-RAM recorder,
             a naive per-step Zarr append, and zarrec
  memory     peak RSS of 1,000 vs 10,000 recorded steps: zarrec vs the in-RAM recorder
  scaling    growing embedding sizes up to GPT-2 small (50257 x 768)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
MB = 1e6


# ---------------------------------------------------------------- data -----


def reference_shapes() -> dict[str, tuple[int, ...]]:
    """One step of the default recording: four 128x64 tensors, a 128 vector and two scalars."""
    return {"embeddings": (128, 64), "grads": (128, 64), "momentum": (128, 64), "variance": (128, 64),
            "logits": (128,), "loss": (), "lr": ()}


def whole_model_shapes() -> dict[str, tuple[int, ...]]:
    """Every parameter of the 116k-parameter reference model, with its gradient and both Adam moments."""
    from zarrec.reference.config import TrainConfig
    from zarrec.reference.model import build_model

    model = build_model(TrainConfig(dtype="float32"))
    shapes = {}
    for name, parameter in model.named_parameters():
        for kind in ("param", "grad", "exp_avg", "exp_avg_sq"):
            shapes[f"{kind}.{name}"] = tuple(parameter.shape)
    return shapes


def step_pool(shapes: dict[str, tuple[int, ...]], size: int, device: str, seed: int = 0):
    """``size`` distinct steps of bf16-valued float32 tensors (what a bf16 run records), on ``device``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pool = []
    for _ in range(size):
        step = {}
        for name, shape in shapes.items():
            values = torch.randn(shape, generator=generator) * 0.05
            step[name] = values.to(torch.bfloat16).to(device)
        pool.append(step)
    return pool


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def resolve(device: str) -> str:
    from zarrec.reference.train import resolve_device

    return resolve_device(device)


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


# ---------------------------------------------------------- child cases -----


def profile_shapes(profile: str) -> dict[str, tuple[int, ...]]:
    return reference_shapes() if profile == "reference" else whole_model_shapes()


def default_chunk_steps(profile: str) -> int:
    """The steps per chunk the Recorder chooses for a profile's bf16 values."""
    from zarrec.store.contract import auto_chunk_steps

    sizes = [int(np.prod(shape)) for shape in profile_shapes(profile).values()]
    return auto_chunk_steps(sizes, [2] * len(sizes))


def case_synthetic(profile: str, steps: int, chunk_steps: int, cname: str, clevel: int, device: str, out: str) -> dict:
    """Stream ``steps`` steps of a profile through zarrec; raw MB/s from first record to close()."""
    from zarrec import Recorder
    from zarrec.analysis.summary import summarize
    from zarr.codecs import BloscCodec

    shapes = profile_shapes(profile)
    pool = step_pool(shapes, 16, device)
    step_bytes = sum(int(np.prod(shape)) * 4 for shape in shapes.values())
    compressor = BloscCodec(cname=cname, clevel=clevel, shuffle="bitshuffle", typesize=4)
    synchronize(device)
    start = time.perf_counter()
    with Recorder(out, chunk_steps=chunk_steps, compressor=compressor) as recorder:
        for step in range(steps):
            recorder.record(step, **pool[step % len(pool)])
    elapsed = time.perf_counter() - start
    summary = summarize(out)
    data_bytes = sum(v.raw_bytes for v in summary.variables)
    data_stored = sum(v.stored_bytes for v in summary.variables)
    return {"raw_mb_s": steps * step_bytes / elapsed / MB, "seconds": elapsed, "raw_bytes": data_bytes,
            "stored_bytes": data_stored, "compression": data_bytes / data_stored, "peak_rss_mb": peak_rss_mb()}


def case_codec(profile: str, steps: int, chunk_steps: int, cname: str, clevel: int) -> dict:
    """The bare codec, one thread, on the same chunks and as many bytes as ``case_synthetic`` writes: MB/s of input."""
    import numcodecs
    from numcodecs import blosc

    blosc.use_threads = False  # one core, as inside zarr's writer thread
    codec = numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=numcodecs.Blosc.BITSHUFFLE, typesize=4)
    shapes = profile_shapes(profile)
    pool = step_pool(shapes, 16, "cpu")
    chunks = [np.stack([pool[i % len(pool)][name].float().numpy() for i in range(chunk_steps)]) for name in shapes]
    rounds = max(1, round(steps / chunk_steps))
    start = time.perf_counter()
    for _ in range(rounds):
        for chunk in chunks:
            codec.encode(chunk)
    elapsed = time.perf_counter() - start
    return {"codec_mb_s": rounds * sum(chunk.nbytes for chunk in chunks) / elapsed / MB}


def case_training(variant: str, steps: int, dtype: str, device: str, out: str) -> dict:
    """Train the reference configuration for ``steps`` steps with one recording variant."""
    from transformers import TrainerCallback

    import recorders
    from zarrec import ZarrecCallback
    from zarrec.reference.config import TrainConfig
    from zarrec.reference.train import make_trainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.times.append(time.perf_counter() - self._start)

    recorder = {
        "none": lambda: None,
        "in_ram_reference": lambda: recorders.InRamReference(out),
        "naive_append": lambda: recorders.NaiveAppend(out),
        "zarrec": lambda: ZarrecCallback(out),
    }[variant]()
    timer = StepTimer()
    in_step, at_end = time_events(recorder) if recorder else ([0.0], [0.0])
    config = TrainConfig(steps=steps, dtype=dtype, device=device)
    with tempfile.TemporaryDirectory() as trainer_dir:
        trainer = make_trainer(config, trainer_dir, [timer] + ([recorder] if recorder else []), progress=False)
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    warm = timer.times[5:] if len(timer.times) > 10 else timer.times
    return {"median_step_ms": 1000 * statistics.median(warm), "total_s": total, "peak_rss_mb": peak_rss_mb(),
            "bytes_on_disk": directory_bytes(out), "recording_ms_per_step": 1000 * in_step[0] / steps,
            "recording_at_end_s": at_end[0]}


def time_events(callback) -> tuple[list[float], list[float]]:
    """Accumulate the time the training thread spends in a callback's handlers: per step, and at the end."""
    in_step, at_end = [0.0], [0.0]
    for event in ("on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end", "on_train_end"):
        handler = getattr(callback, event)
        total = at_end if event == "on_train_end" else in_step

        def timed(*args, _handler=handler, _total=total, **kwargs):
            start = time.perf_counter()
            try:
                return _handler(*args, **kwargs)
            finally:
                _total[0] += time.perf_counter() - start

        setattr(callback, event, timed)
    return in_step, at_end


def case_memory(recorder: str, steps: int, out: str) -> dict:
    """Peak RSS of recording ``steps`` reference-shaped steps, with zarrec or the notebook's lists."""
    import torch

    pool = step_pool(reference_shapes(), 16, "cpu")
    if recorder == "zarrec":
        from zarrec import Recorder

        with Recorder(out) as zarrec_recorder:
            for step in range(steps):
                zarrec_recorder.record(step, **pool[step % len(pool)])
    else:
        from safetensors.torch import save_file

        history = {name: [] for name in reference_shapes()}
        for step in range(steps):
            for name, value in pool[step % len(pool)].items():
                history[name].append(value.clone().cpu().float())
        save_file({name: torch.stack(values) for name, values in history.items()}, out)
    return {"peak_rss_mb": peak_rss_mb(), "bytes_on_disk": directory_bytes(out)}


def case_scaling(vocab: int, dim: int, steps: int, device: str, out: str) -> dict:
    """Four vocab x dim tensors per step (matrix, gradient, two moments), chunked as the Recorder chooses."""
    import torch

    from zarrec import Recorder

    generator = torch.Generator().manual_seed(0)
    pool = [{name: (torch.randn(vocab, dim, generator=generator) * 0.05).to(torch.bfloat16).to(device)
             for name in ("embeddings", "grads", "momentum", "variance")} for _ in range(2)]
    step_bytes = 4 * vocab * dim * 4
    synchronize(device)
    start = time.perf_counter()
    with Recorder(out) as recorder:  # staging within the default budget
        for step in range(steps):
            recorder.record(step, **pool[step % 2])
    elapsed = time.perf_counter() - start
    stored = directory_bytes(out)
    return {"raw_mb_s": steps * step_bytes / elapsed / MB, "step_mb": step_bytes / MB,
            "stored_mb_per_step": stored / steps / MB, "chunk_steps": recorder.chunk_steps, "peak_rss_mb": peak_rss_mb()}


def directory_bytes(path: str) -> int:
    target = Path(path)
    if target.is_file():
        return target.stat().st_size
    return sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) if target.exists() else 0


CASES = {"synthetic": case_synthetic, "codec": case_codec, "training": case_training, "memory": case_memory,
         "scaling": case_scaling}


IN_PROCESS = False  # --quick runs every case in this process: no start-up cost, but no per-case RSS


def run_child(kind: str, **arguments) -> dict:
    """Run one case in a fresh Python process; it prints its result as the last line of JSON."""
    with tempfile.TemporaryDirectory(prefix="zarrec-bench-") as scratch:
        if kind in ("synthetic", "training", "memory", "scaling"):
            arguments["out"] = os.path.join(scratch, "out")
        if IN_PROCESS:
            return CASES[kind](**arguments)
        command = [sys.executable, str(HERE), "--child", json.dumps({"kind": kind, **arguments})]
        env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{kind} {arguments} failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------- sections -----


def section_synthetic(plan: dict, device: str) -> list[dict]:
    """Each (profile, codec, chunk_steps): zarrec and the bare codec, alternated, ``synthetic_repeats`` times.

    The machine's speed drifts between runs, so each zarrec run is divided by the codec run
    next to it, and the median of those ratios is quoted.
    """
    rows = []
    for profile, steps in plan["synthetic_steps"].items():
        default = default_chunk_steps(profile)
        for cname, clevel in plan["codecs"]:
            for chunk_steps in plan["chunk_steps"][profile]:
                zarrec_runs, codec_runs = [], []
                for _ in range(plan["synthetic_repeats"]):
                    zarrec_runs.append(run_child("synthetic", profile=profile, steps=steps, chunk_steps=chunk_steps,
                                                 cname=cname, clevel=clevel, device=device))
                    codec_runs.append(run_child("codec", profile=profile, steps=steps, chunk_steps=chunk_steps,
                                                cname=cname, clevel=clevel))
                ratios = [z["raw_mb_s"] / c["codec_mb_s"] for z, c in zip(zarrec_runs, codec_runs)]
                rows.append({
                    "profile": profile, "codec": f"blosc-{cname}-{clevel}+bitshuffle",
                    "chunk_steps": f"{chunk_steps} (default)" if chunk_steps == default else chunk_steps,
                    "steps": steps, "zarrec_mb_s": statistics.median(r["raw_mb_s"] for r in zarrec_runs),
                    "codec_mb_s": statistics.median(r["codec_mb_s"] for r in codec_runs),
                    "fraction_of_codec": statistics.median(ratios), "compression": zarrec_runs[0]["compression"],
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in zarrec_runs),
                })
                print(f"  synthetic {rows[-1]}", file=sys.stderr)
    return rows


def section_training(plan: dict, device: str) -> list[dict]:
    variants = ["none", "in_ram_reference", "naive_append", "zarrec"]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    order = random.Random(0)
    for repeat in range(plan["repeats"]):
        shuffled = variants[:]
        order.shuffle(shuffled)  # interleaved, in a different order each round
        for variant in shuffled:
            results[variant].append(run_child("training", variant=variant, steps=plan["training_steps"],
                                              dtype=plan["training_dtype"], device=device))
            print(f"  training round {repeat} {variant}: {results[variant][-1]}", file=sys.stderr)
    base_step = statistics.median(r["median_step_ms"] for r in results["none"])
    base_total = statistics.median(r["total_s"] for r in results["none"])
    base_rss = statistics.median(r["peak_rss_mb"] for r in results["none"])
    rows = []
    for variant in variants:
        step = statistics.median(r["median_step_ms"] for r in results[variant])
        total = statistics.median(r["total_s"] for r in results[variant])
        rss = statistics.median(r["peak_rss_mb"] for r in results[variant])
        in_thread = statistics.median(r["recording_ms_per_step"] for r in results[variant])
        rows.append({"variant": variant, "median_step_ms": step, "step_overhead": step / base_step - 1,
                     "recording_ms_per_step": in_thread, "recording_share": in_thread / base_step,
                     "recording_at_end_s": statistics.median(r["recording_at_end_s"] for r in results[variant]),
                     "total_s": total, "total_overhead": total / base_total - 1, "peak_rss_mb": rss,
                     "rss_over_none_mb": rss - base_rss,
                     "bytes_on_disk": statistics.median(r["bytes_on_disk"] for r in results[variant])})
    return rows


def section_memory(plan: dict) -> list[dict]:
    rows = []
    for recorder in ("zarrec", "in_ram_reference"):
        by_steps = {steps: run_child("memory", recorder=recorder, steps=steps) for steps in plan["memory_steps"]}
        small, large = plan["memory_steps"]
        rows.append({"recorder": recorder, **{f"peak_rss_mb_{s}": r["peak_rss_mb"] for s, r in by_steps.items()},
                     "growth_mb": by_steps[large]["peak_rss_mb"] - by_steps[small]["peak_rss_mb"],
                     f"bytes_on_disk_{large}": by_steps[large]["bytes_on_disk"]})
        print(f"  memory {rows[-1]}", file=sys.stderr)
    return rows


def section_scaling(plan: dict, device: str) -> list[dict]:
    rows = []
    for vocab, dim, steps in plan["scaling"]:
        result = run_child("scaling", vocab=vocab, dim=dim, steps=steps, device=device)
        rows.append({"shape": f"{vocab}x{dim}", "steps": steps, **result})
        print(f"  scaling {rows[-1]}", file=sys.stderr)
    return rows


# ----------------------------------------------------------------- report -----


def table(rows: list[dict], columns: dict[str, str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[key]) for key in columns) + " |" for row in rows]
    return "\n".join(lines)


def report(results: dict) -> str:
    parts = [f"Device: {results['device']} · {results['machine']}"]
    if results.get("synthetic"):
        parts += ["\n### Synthetic write throughput\n", table(results["synthetic"], {
            "profile": "profile", "codec": "codec", "chunk_steps": "steps per chunk", "steps": "steps",
            "zarrec_mb_s": "zarrec MB/s",
            "codec_mb_s": "bare codec MB/s (1 thread)", "fraction_of_codec": "zarrec / codec (median of pairs)",
            "compression": "raw / on disk", "peak_rss_mb": "peak RSS MB"})]
    if results.get("training"):
        parts += ["\n### Training overhead\n", table(results["training"], {
            "variant": "recording", "median_step_ms": "median step ms", "step_overhead": "step time vs none",
            "recording_ms_per_step": "ms/step in recorder", "recording_share": "recorder / step (none)",
            "recording_at_end_s": "s at train end", "total_overhead": "wall clock vs none", "peak_rss_mb": "peak RSS MB",
            "rss_over_none_mb": "RSS over none, MB", "bytes_on_disk": "bytes on disk"})]
    if results.get("memory"):
        columns = {"recorder": "recorder"}
        columns.update({k: k.replace("_", " ") for k in results["memory"][0] if k != "recorder"})
        parts += ["\n### Peak memory against run length\n", table(results["memory"], columns)]
    if results.get("scaling"):
        parts += ["\n### Scaling with tensor size\n", table(results["scaling"], {
            "shape": "embedding", "step_mb": "MB per step (4 tensors)", "chunk_steps": "steps per chunk",
            "raw_mb_s": "zarrec MB/s", "stored_mb_per_step": "MB on disk per step", "peak_rss_mb": "peak RSS MB"})]
    return "\n".join(parts)


PLANS = {
    "full": {"repeats": 3, "synthetic_repeats": 5,
             "chunk_steps": {"reference": [128, 256, 512], "whole_model": [64, 256]},
             "codecs": [("zstd", 3), ("lz4", 5)],
             "synthetic_steps": {"reference": 8192, "whole_model": 1024},
             "training_steps": 60, "training_dtype": "bfloat16",
             "memory_steps": [1000, 10000],
             "scaling": [(128, 64, 2048), (1024, 256, 256), (8192, 512, 32), (50257, 768, 4)]},
    "quick": {"repeats": 1, "synthetic_repeats": 1, "chunk_steps": {"reference": [64], "whole_model": [64]}, "codecs": [("zstd", 3)],
              "synthetic_steps": {"reference": 256, "whole_model": 64},
              "training_steps": 12, "training_dtype": "float32",
              "memory_steps": [100, 400],
              "scaling": [(128, 64, 64), (1024, 256, 8)]},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run that finishes in under a minute")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--sections", default="synthetic,training,memory,scaling",
                        help="comma-separated subset of: synthetic, training, memory, scaling")
    parser.add_argument("--training-dtype", choices=["float32", "bfloat16"], help="override the plan's dtype")
    parser.add_argument("--json", default="benchmark_results.json", help="where to write the results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        request = json.loads(args.child)
        print(json.dumps(CASES[request.pop("kind")](**request)))
        return 0
    global IN_PROCESS
    IN_PROCESS = args.quick
    plan = dict(PLANS["quick" if args.quick else "full"])
    if args.training_dtype:
        plan["training_dtype"] = args.training_dtype
    device = resolve(args.device)
    sections = args.sections.split(",")
    results = {"device": device, "machine": f"{os.cpu_count()} CPU cores", "plan": plan}
    runners = {"synthetic": lambda: section_synthetic(plan, device), "training": lambda: section_training(plan, device),
               "memory": lambda: section_memory(plan), "scaling": lambda: section_scaling(plan, device)}
    for section in sections:
        print(f"{section}...", file=sys.stderr)
        results[section] = runners[section]()
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
