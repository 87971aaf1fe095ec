"""Host time per step: what the training thread spends in zarrec's calls each optimizer step.

The reference model (byte-level GPT-2, 116 k parameters, bf16) trained by a plain loop, batch
4 × 32, one intra-op thread (``torch.set_num_threads(1)``), recorded by :class:`zarrec.ModelRecorder`
with the health statistics at every step; per step, the time inside ``recorder.before_clipping()``
and ``recorder.step(loss=loss)`` (and inside any hook zarrec installs on the model or optimizer),
median over ``--steps`` steps after ``--warmup``. Recordings, interleaved in blocks of
``--block`` steps so that the machine's drift hits each alike (and a recording's threads are
idle while another one trains):

- ``default``: ``ModelRecorder(out, model, optimizer)``: the embedding's full state, the scalars,
  the statistics of every parameter;
- ``default_norm_handed``: the same recording in the loop that hands ``step()`` the norm
  ``clip_grad_norm_`` returned (``recorder.step(loss=loss, grad_norm_before_clipping=norm)``,
  no ``before_clipping()`` call): one copy of the gradients a step, not two;
- ``every_parameter``: ``params="*"``: every parameter's full state;
- ``no_statistics``: the default with ``statistics=False`` (for contrast);
- ``gradient_copies``: no recorder, only what the training thread cannot leave to a worker on a
  CPU: one fused copy of the gradients before clipping and one after the update (the floor
  under ``default``, measured in the same loop).

On a CPU the copies of the gradients run on the training thread and are included (the rest of
a small model's work runs on zarrec's worker thread); on an accelerator the device work is
queued on its stream, and the times are what the host spends queuing it.

    python benchmarks/host_time.py                       # 350 steps (~2 min on 2 CPU cores)
    python benchmarks/host_time.py --device cuda         # on an accelerator (or --device mps on a Mac)
    python benchmarks/host_time.py --quick               # a smoke run: 30 steps (a test runs it)
    python benchmarks/host_time.py --profile default     # where the time goes (cProfile, top 25)
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

RECORDINGS = {
    "default": {},
    "default_norm_handed": {},
    "every_parameter": {"params": "*"},
    "no_statistics": {"statistics": False},
    "gradient_copies": None,
}


class GradientCopies:
    """The floor: a recorder's two copies of the gradients a step, and nothing else."""

    def __init__(self, model) -> None:
        from zarrec.capture.passes import FlatGroup

        self.parameters = list(model.parameters())
        self.group = FlatGroup([p.detach() for p in self.parameters], [1] * len(self.parameters))

    def before_clipping(self) -> None:
        self.group.copy_of_grads([p.grad for p in self.parameters], before_clipping=True)

    def step(self, loss) -> None:
        self.group.copy_of_grads([p.grad for p in self.parameters])

    def close(self) -> None:
        pass


def timed_step(model, optimizer, recorder, batch, profiler: cProfile.Profile | None, hands_norm: bool = False) -> float:
    """One step of the plain loop; the seconds spent in the recorder's calls (profiled, with
    ``profiler``). ``hands_norm``: the loop hands ``step()`` the norm that clipping returned."""
    import torch

    def timed(call) -> float:
        if profiler is not None:
            profiler.enable()
        start = time.perf_counter()
        call()
        spent = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
        return spent

    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    spent = 0.0 if hands_norm else timed(recorder.before_clipping)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    handed = {"grad_norm_before_clipping": norm} if hands_norm else {}
    spent += timed(lambda: recorder.step(loss=loss, **handed))
    optimizer.zero_grad()
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=350)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--block", type=int, default=50, help="steps of one recording before the next one's")
    parser.add_argument("--recordings", default=",".join(RECORDINGS))
    parser.add_argument("--profile", choices=[name for name, options in RECORDINGS.items() if options is not None],
                        help="profile one recording's calls instead")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--quick", action="store_true", help="a smoke run of 30 steps")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.block = 30, 5, 10

    import torch

    import zarrec
    from zarrec.reference.config import TrainConfig
    from zarrec.reference.corpus import load_corpus
    from zarrec.reference.model import build_model

    torch.set_num_threads(1)
    config = TrainConfig()
    data = torch.from_numpy(load_corpus(None, config.vocab_size).tokens[: 4 * 32 * 64].astype("int64")).reshape(-1, 32)
    data = data.to(args.device)
    names = [args.profile] if args.profile else args.recordings.split(",")
    profiler = cProfile.Profile() if args.profile else None
    runs = {}
    with tempfile.TemporaryDirectory(prefix="zarrec-host-") as scratch:
        for name in names:
            torch.manual_seed(0)
            model = build_model(config).to(args.device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
            options = RECORDINGS[name]
            recorder = (GradientCopies(model) if options is None else
                        zarrec.ModelRecorder(str(Path(scratch) / f"{name}.zarr"), model, optimizer, **options))
            runs[name] = (model, optimizer, recorder, [])
        total = args.warmup + args.steps
        for first in range(0, total, args.block):
            for name, (model, optimizer, recorder, times) in runs.items():
                for step in range(first, min(first + args.block, total)):
                    batch = data[(4 * step) % len(data):][:4]
                    spent = timed_step(model, optimizer, recorder, batch, profiler if step >= args.warmup else None,
                                       hands_norm=name == "default_norm_handed")
                    if step >= args.warmup:
                        times.append(spent)
        for _, _, recorder, _ in runs.values():
            recorder.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    results = {name: {"median_ms": 1e3 * statistics.median(times), "steps": len(times)}
               for name, (_, _, _, times) in runs.items()}
    print("| recording | host time per step (median, ms) |\n|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['median_ms']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch_threads": 1, "steps": args.steps, "device": args.device,
                                               "recordings": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
