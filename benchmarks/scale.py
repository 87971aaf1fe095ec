"""Recording a real model: what each recording option costs a GPT-2-small-shaped HF Trainer run,
and what the writer costs a fast step. Each variant runs in its own process, interleaved with
no recording in the same invocation; ratios are against that baseline, medians quoted.

    python benchmarks/scale.py                      # both sections (~25 min on 2 CPU cores)
    python benchmarks/scale.py --quick              # a smoke run of both, tiny shapes, in one process (~30 s)
    python benchmarks/scale.py --device cuda        # the same on an accelerator (or --device mps on a Mac)

Sections:
  gpt2       GPT2Config(n_layer=2): vocab 50257, n_embd 768, float32, AdamW, batch 2 x context 64;
             variants: none, default (with the health statistics of every parameter), the default
             without them, the statistics alone (params=[]: no full state), every=10, rows (1,000
             tokens), mantissa_bits=7, and the README's large-model recipe (--variants: some).
             Median step and wall clock vs none, peak RSS over none, bytes on disk per step,
             shard files per 1,000 steps, and whether the slow-writer warning fired.
  fast_step  the reference model (128 x 64) under bf16 autocast, ~110 ms a step, zarrec with
             chunk_steps=32 so the writer works during training: mean step vs none, in
             interleaved rounds, the median of the ratios (--fast-variants: also without the
             statistics, or with statistics="norms").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve()
MB = 1e6

# The README's large-model recipe: the health statistics of every parameter at every step (the
# default), the full state of 1,000 tokens every 10th step, rounded to bfloat16's precision.
RECIPE = {"rows": "first 1000", "every": 10, "mantissa_bits": 7}
VARIANTS = {
    "none": None,
    "default": {},
    "no_statistics": {"statistics": False},
    "statistics_only": {"params": []},  # every parameter's health every step, no full state
    "every_10": {"every": 10},
    "rows_1000": {"rows": "first 1000"},
    "mantissa_7": {"mantissa_bits": 7},
    "recipe": RECIPE,
}


def peak_rss_mb() -> float:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) / 1024


def store_size(path: str) -> tuple[int, int]:
    """Bytes under ``path``, and its shard files (metadata files, a few per array, left out)."""
    files = [p for p in Path(path).rglob("*") if p.is_file()] if Path(path).exists() else []
    return sum(p.stat().st_size for p in files), sum("c" in p.relative_to(path).parts for p in files)


def step_timer(device: str):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def _sync(self):
            if device != "cpu":
                import torch

                torch.accelerator.synchronize()

        def on_step_begin(self, args, state, control, **kwargs):
            self._sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self._sync()
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def case_gpt2(variant: str, steps: int, vocab: int, n_embd: int, device: str, out: str) -> dict:
    """One HF Trainer run of a 2-layer GPT-2 of ``vocab`` x ``n_embd`` on random tokens."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from zarrec import ZarrecCallback, ZarrecWarning

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, vocab_size=vocab, n_embd=n_embd, n_head=12, n_positions=64))
    tokens = torch.randint(0, vocab, (2 * steps, 64))
    dataset = [{"input_ids": row, "labels": row} for row in tokens]
    options = dict(VARIANTS[variant] or {})
    if options.get("rows") == "first 1000":
        options["rows"] = slice(0, 1000)
    timer = step_timer(device)
    callbacks = [timer] + ([ZarrecCallback(out, **options)] if VARIANTS[variant] is not None else [])
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, max_steps=steps, per_device_train_batch_size=2, learning_rate=1e-4,
                                 report_to="none", save_strategy="no", logging_steps=steps, disable_tqdm=True,
                                 use_cpu=device == "cpu", dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ZarrecWarning)
            start = time.perf_counter()
            trainer.train()
            total = time.perf_counter() - start
    size, files = store_size(out)
    return {"median_step_s": statistics.median(timer.times[2:]), "total_s": total, "peak_rss_mb": peak_rss_mb(),
            "bytes_per_step": size / (steps + 1), "shard_files_per_1000_steps": files / (steps + 1) * 1000,
            "slow_writer_warning": any("waited for the writer" in str(w.message) for w in caught)}


def case_fast_step(variant: str, steps: int, device: str, out: str) -> dict:
    """The reference model, float32 parameters under bf16 autocast: the mean step after warm-up."""
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from zarrec import ZarrecCallback, ZarrecWarning
    from zarrec.reference.config import TrainConfig
    from zarrec.reference.corpus import load_corpus
    from zarrec.reference.model import build_model
    from zarrec.reference.train import ByteDataset

    hf_logging.set_verbosity_error()
    config = TrainConfig(dtype="float32", steps=steps)
    corpus = load_corpus(None, config.vocab_size)
    timer = step_timer(device)
    options = {"zarrec": {}, "zarrec_no_statistics": {"statistics": False}, "zarrec_norms": {"statistics": "norms"}}
    callbacks = [timer] + ([ZarrecCallback(out, chunk_steps=32, **options[variant])] if variant != "none" else [])
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, max_steps=steps, per_device_train_batch_size=config.batch_size,
                                 learning_rate=config.learning_rate, bf16=True, report_to="none", save_strategy="no",
                                 logging_steps=steps, disable_tqdm=True, use_cpu=device == "cpu", dataloader_num_workers=0)
        trainer = Trainer(model=build_model(config), args=args, train_dataset=ByteDataset(corpus, config.context),
                          callbacks=callbacks)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ZarrecWarning)
            trainer.train()
    warm = timer.times[min(10, steps // 2):]
    return {"mean_step_ms": 1000 * statistics.fmean(warm), "peak_rss_mb": peak_rss_mb(),
            "slow_writer_warning": any("waited for the writer" in str(w.message) for w in caught)}


CASES = {"gpt2": case_gpt2, "fast_step": case_fast_step}


def run_child(kind: str, in_process: bool = False, **arguments) -> dict:
    """One case in a fresh process (its peak RSS its own), or in this one (a smoke run: no
    interpreter and torch import per case)."""
    with tempfile.TemporaryDirectory(prefix="zarrec-scale-") as scratch:
        arguments["out"] = os.path.join(scratch, "run.zarr")
        if in_process:
            return CASES[kind](**arguments)
        command = [sys.executable, str(HERE), "--child", json.dumps({"kind": kind, **arguments})]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{kind} {arguments} failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def section_gpt2(plan: dict, device: str, variants: list[str]) -> list[dict]:
    """Every variant once per round, the order reversed every other round (A B C .. C B A)."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    names = list(variants)
    for repeat in range(plan["repeats"]):
        for variant in names if repeat % 2 == 0 else names[::-1]:
            runs[variant].append(run_child("gpt2", plan["in_process"], variant=variant, steps=plan["steps"], vocab=plan["vocab"],
                                           n_embd=plan["n_embd"], device=device))
            print(f"  gpt2 round {repeat} {variant}: {runs[variant][-1]}", file=sys.stderr)
    base = {key: statistics.median(r[key] for r in runs["none"]) for key in ("median_step_s", "total_s", "peak_rss_mb")}
    rows = []
    for variant, results in runs.items():
        median = {key: statistics.median(r[key] for r in results) for key in results[0] if key != "slow_writer_warning"}
        rows.append({
            "variant": variant, "options": json.dumps(VARIANTS[variant]) if VARIANTS[variant] is not None else "-",
            "median_step_s": median["median_step_s"], "step_vs_none": median["median_step_s"] / base["median_step_s"],
            "wall_vs_none": median["total_s"] / base["total_s"], "rss_over_none_mb": median["peak_rss_mb"] - base["peak_rss_mb"],
            "mb_per_step": median["bytes_per_step"] / MB, "shard_files_per_1000_steps": median["shard_files_per_1000_steps"],
            "slow_writer_warning": any(r["slow_writer_warning"] for r in results),
        })
    return rows


def section_fast_step(plan: dict, device: str, variants: list[str]) -> list[dict]:
    """Rounds of none and zarrec (and the ``variants`` asked for: ``zarrec_no_statistics``,
    ``zarrec_norms``), the order reversed every other round: each one's ratio to the none of
    its round, the median of those."""
    variants = ["none", "zarrec", *variants]
    rounds = []
    for repeat in range(plan["pairs"]):
        order = variants if repeat % 2 == 0 else variants[::-1]
        rounds.append({v: run_child("fast_step", plan["in_process"], variant=v, steps=plan["fast_steps"], device=device)
                       for v in order})
        print(f"  fast step round {repeat}: {rounds[-1]}", file=sys.stderr)
    rows = []
    for variant in variants:
        ratios = [r[variant]["mean_step_ms"] / r["none"]["mean_step_ms"] for r in rounds]
        rows.append({"variant": variant, "mean_step_ms": statistics.median(r[variant]["mean_step_ms"] for r in rounds),
                     "vs_none": statistics.median(ratios), "ratios": ", ".join(f"{x:.3f}" for x in ratios),
                     "slow_writer_warning": any(r[variant]["slow_writer_warning"] for r in rounds)})
    return rows


def table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


PLANS = {
    "full": {"repeats": 2, "steps": 40, "vocab": 50257, "n_embd": 768, "pairs": 10, "fast_steps": 160, "in_process": False},
    # (a smoke run: in one process, small enough that every parameter is reduced eagerly, without compiling)
    "quick": {"repeats": 1, "steps": 8, "vocab": 800, "n_embd": 24, "pairs": 1, "fast_steps": 8, "in_process": True},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of every section at tiny shapes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--sections", default="gpt2,fast_step", help="comma-separated: gpt2, fast_step")
    parser.add_argument("--variants", help=f"comma-separated gpt2 variants, 'none' among them (default: all of "
                                           f"{', '.join(VARIANTS)})")
    parser.add_argument("--fast-variants", default="", help="fast_step variants beside none and zarrec (comma-"
                        "separated): zarrec_no_statistics, zarrec_norms")
    parser.add_argument("--repeats", type=int, help="rounds of the gpt2 variants (default 2), and pairs of fast_step (10)")
    parser.add_argument("--json", default="scale_results.json", help="where to write the results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CASES[spec.pop("kind")](**spec)))
        return 0
    plan = dict(PLANS["quick" if args.quick else "full"])
    if args.repeats:
        plan.update(repeats=args.repeats, pairs=args.repeats)
    results = {"plan": plan, "device": args.device}
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    sections = {"gpt2": lambda: section_gpt2(plan, args.device, variants),
                "fast_step": lambda: section_fast_step(plan, args.device, [v for v in args.fast_variants.split(",") if v])}
    for name in args.sections.split(","):
        results[name] = sections[name]()
        print(f"\n## {name}\n\n{table(results[name])}\n")
    Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
