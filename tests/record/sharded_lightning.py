"""A Lightning run recorded by ZarrecLightningCallback: on one CPU process, or sharded by FSDP2
(``ModelParallelStrategy``, which applies ``fully_shard`` in ``configure_model``) over 2 CPU
processes that Lightning starts itself (gloo). The tests of zarrec.record.ranks run it as a subprocess:

    python sharded_lightning.py OUT --devices 1|2

Each step's global batch is the same 8 sequences either way (2 ranks: 4 each, see train_dataloader).
"""

from __future__ import annotations

import argparse

import lightning.pytorch as lightning
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard

from zarrec.adapters.lightning import ZarrecLightningCallback

ROWS, BATCH = 129, 8


class ShardedLM(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(ROWS, 8)
        self.out = torch.nn.Linear(8, ROWS)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def configure_model(self) -> None:
        if self.trainer.world_size > 1:
            mesh = self.device_mesh["data_parallel"]
            for module in (self.embed, self.out, self):
                fully_shard(module, mesh=mesh)

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        return torch.nn.functional.cross_entropy(self.out(self.embed(tokens[:, :-1])).flatten(0, 1), tokens[:, 1:].flatten())

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """Step t's global batch is sequences 8t..8t+7; rank r of W trains on its r-th slice of it."""
        rank, world = self.trainer.global_rank, self.trainer.world_size
        sequences = torch.randint(0, ROWS, (64, 9), generator=torch.Generator().manual_seed(1))
        per_rank = BATCH // world
        mine = sequences.view(-1, world, per_rank, 9)[:, rank].reshape(-1, 9)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(mine), batch_size=per_rank)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    sharded = {"devices": 2, "strategy": ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)}
    trainer = lightning.Trainer(
        max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ZarrecLightningCallback(args.out, chunk_steps=4)],
        use_distributed_sampler=False, **(sharded if args.devices == 2 else {"devices": 1}),
    )
    trainer.fit(ShardedLM())


if __name__ == "__main__":
    main()
