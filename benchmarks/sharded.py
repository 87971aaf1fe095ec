"""Memory of a sharded (FSDP2) recording per rank, against one process recording the same model.

    python benchmarks/sharded.py [--rows 16384] [--width 256] [--steps 8] [--ranks 2] [--json FILE]

A plain loop trains an embedding of ``rows × width`` and a linear head with AdamW, recording
the embedding, its gradient and both moments every step (the default of ``ModelRecorder``):
once in one process, once sharded with ``fully_shard`` over ``--ranks`` CPU processes (gloo,
torchrun), each without recording and with it, interleaved. Each process reports the host
staging memory its recorder allocated and its peak RSS (VmHWM); a rank should hold about its
share of the single process's staging.
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


def child(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import zarrec

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(args.rows, args.width), torch.nn.Linear(args.width, args.rows))
    model.get_input_embeddings = lambda: model[0]
    rank, world = 0, 1
    if "RANK" in os.environ:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    recorder = zarrec.ModelRecorder(args.out, model, optimizer) if args.record else None
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        tokens = torch.randint(0, args.rows, (8, 32), generator=torch.Generator().manual_seed(step))
        tokens = tokens[rank * 8 // world:(rank + 1) * 8 // world]
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, args.rows), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        if recorder is not None:
            recorder.step(loss=loss)
        optimizer.zero_grad()
    staging = recorder.recorder.staging_bytes if recorder is not None else 0
    if recorder is not None:
        recorder.close()
    seconds = time.perf_counter() - start
    peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    with open(f"{args.out}.rank{rank}.json", "w") as file:
        json.dump({"rank": rank, "staging_bytes": staging, "peak_rss_bytes": 1024 * peak_kb, "seconds": seconds}, file)
    if world > 1:
        dist.destroy_process_group()


def run(args: argparse.Namespace, ranks: int, record: bool) -> list[dict]:
    out = os.path.join(tempfile.mkdtemp(), "run.zarr")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--standalone"] if ranks > 1 else [sys.executable]
    command = [*launch, __file__, "--child", "--out", out, "--rows", str(args.rows), "--width", str(args.width),
               "--steps", str(args.steps), *(["--record"] if record else [])]
    subprocess.run(command, capture_output=True, text=True, check=True)
    return [json.load(open(f"{out}.rank{rank}.json")) for rank in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    variants = [(1, False), (1, True), (args.ranks, False), (args.ranks, True)]
    results: dict[str, list[list[dict]]] = {}
    for round_ in range(args.rounds):
        for ranks, record in variants if round_ % 2 == 0 else variants[::-1]:
            results.setdefault(f"{ranks} {'recording' if record else 'none'}", []).append(run(args, ranks, record))

    def median(variant: str, key: str, rank: int) -> float:
        return statistics.median(r[rank][key] for r in results[variant])

    one, many = "1", str(args.ranks)
    single_staging = median(f"{one} recording", "staging_bytes", 0)
    table = {"rows": args.rows, "width": args.width, "steps": args.steps, "ranks": args.ranks, "rounds": args.rounds,
             "single_process": {"staging_mb": single_staging / 1e6,
                                "rss_over_none_mb": (median(f"{one} recording", "peak_rss_bytes", 0)
                                                     - median(f"{one} none", "peak_rss_bytes", 0)) / 1e6},
             "per_rank": [{"rank": rank, "staging_mb": median(f"{many} recording", "staging_bytes", rank) / 1e6,
                           "staging_share_of_single": median(f"{many} recording", "staging_bytes", rank) / single_staging,
                           "rss_over_none_mb": (median(f"{many} recording", "peak_rss_bytes", rank)
                                                - median(f"{many} none", "peak_rss_bytes", rank)) / 1e6}
                          for rank in range(args.ranks)],
             "raw": results}
    print(json.dumps({k: v for k, v in table.items() if k != "raw"}, indent=1))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(table, file, indent=1)


if __name__ == "__main__":
    main()
