"""A plain training loop recorded with zarrec, on one process or sharded by FSDP2 over the ranks
that torchrun starts (gloo, CPU): the tests of zarrec.record.ranks run it as a real subprocess.

    python sharded_loop.py OUT --steps N [--checkpoints DIR] [--die-at STEP --die-rank R] [--raise-at STEP]
                           [--resume] [--chunk-steps N] [--staging-bytes B] [--rows I,J,...]

The model is an embedding of 129 rows (odd: uneven shards, 65 and 64) and a linear head,
trained with AdamW, gradients clipped at a norm of 0.5;
step t's global batch comes from a generator seeded with t, and rank r of W trains on its
r-th slice of it, so one process trains on every rank's batch. With ``--checkpoints`` the
model and optimizer are saved (torch.distributed.checkpoint) after every second step;
``--resume`` continues from the newest checkpoint the store has recorded up to. ``--die-at``:
rank ``--die-rank`` kills itself with SIGKILL after that step; ``--raise-at``: rank 1 raises an
exception after that step (the other ranks train on). ``--rows``: record the embedding at these rows only.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

import zarrec

ROWS, WIDTH, BATCH, CONTEXT = 129, 16, 8, 6


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(ROWS, WIDTH), torch.nn.Linear(WIDTH, ROWS))
    model.get_input_embeddings = lambda: model[0]
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--die-at", type=int)
    parser.add_argument("--die-rank", type=int, default=1)
    parser.add_argument("--raise-at", type=int)
    parser.add_argument("--chunk-steps", type=int, default=4)
    parser.add_argument("--staging-bytes", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--rows", type=lambda text: [int(i) for i in text.split(",")])
    args = parser.parse_args()
    model = build()
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    start = 0
    if args.resume:
        import torch.distributed.checkpoint as dcp
        import zarr

        recorded = int(zarr.open_group(args.out, mode="r")["step"][-1])
        start = max(int(p.name) for p in args.checkpoints.iterdir() if int(p.name) <= recorded)
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)  # (the optimizer's, initialised)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=args.checkpoints / str(start))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    with zarrec.ModelRecorder(
        args.out, model, optimizer, params=["*"], rows=args.rows, chunk_steps=args.chunk_steps, staging_bytes=args.staging_bytes,
        overwrite=not args.resume, initial_step=start, resume_from=start if args.resume else None,
    ) as recorder:
        for step in range(start + 1, args.steps + 1):
            tokens = torch.randint(0, ROWS, (BATCH, CONTEXT), generator=torch.Generator().manual_seed(step))
            tokens = tokens[rank * BATCH // world:(rank + 1) * BATCH // world]
            logits = model(tokens)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, ROWS), tokens[:, 1:].reshape(-1))
            loss.backward()
            recorder.before_clipping()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
            recorder.step(loss=loss)
            optimizer.zero_grad()
            if args.checkpoints is not None and step % 2 == 0:
                import torch.distributed.checkpoint as dcp
                from torch.distributed.checkpoint.state_dict import get_state_dict

                model_state, optimizer_state = get_state_dict(model, optimizer)
                dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=args.checkpoints / str(step))
            if step == args.die_at and rank == args.die_rank:
                os.kill(os.getpid(), signal.SIGKILL)
            if step == args.raise_at and rank == 1:
                raise RuntimeError(f"rank 1 fails after step {step}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
