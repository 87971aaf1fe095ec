"""A tiny Lightning language model and a CPU fit of it: the Lightning runs of the tests
(tests/adapters/test_lightning.py, and the ``lightning_run`` fixture of conftest.py)."""

from __future__ import annotations

import lightning.pytorch as lightning
import torch

LR, DECAY = 1e-2, 0.9  # the scheduler multiplies the learning rate by DECAY after every step


class TinyLM(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": LR})
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(12, 4)
        self.out = torch.nn.Linear(4, 12)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        return torch.nn.functional.cross_entropy(self.out(self.embed(tokens[:, :-1])).flatten(0, 1), tokens[:, 1:].flatten())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=DECAY)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fit(callback, steps: int = 6, module: TinyLM | None = None, **trainer_options) -> TinyLM:
    data = torch.utils.data.TensorDataset(torch.randint(0, 12, (64, 9), generator=torch.Generator().manual_seed(1)))
    module = module or TinyLM()
    trainer_options = {"logger": False, **trainer_options}
    trainer = lightning.Trainer(
        max_steps=steps, accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], **trainer_options,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    return module


class TinyLMWithLogits(TinyLM):
    """Returns its logits from ``training_step`` and takes ``input_ids``, as a probe calls it."""

    def forward(self, input_ids):
        return self.out(self.embed(input_ids))

    def training_step(self, batch, batch_idx):
        (tokens,) = batch
        logits = self(tokens[:, :-1])
        return {"loss": torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()), "logits": logits}
