"""A faithful re-run of the reference notebook's recorder (``shared/seed``), to make legacy files.

``ComprehensiveRecorder`` and ``InstrumentedTrainer`` are the notebook's cells 7 and 8 as
written (its comments trimmed), bugs included: its step counter also counts the Trainer's
end-of-epoch ``_maybe_log_save_evaluate``, and it keeps gradients from before clipping.
``write_legacy_file`` runs them on a tiny model and saves the notebook's cell 12 dictionary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments


class ComprehensiveRecorder:
    """Records everything: embeddings, gradients, Adam state, logits, loss."""

    def __init__(self, vocab_size, hidden_dim, record_every_n):
        self.vocab_size = vocab_size
        self.hidden_dim = hidden_dim
        self.record_every_n = record_every_n
        self.recorded_steps = []
        self.embeddings = []
        self.grads = []
        self.momentum = []
        self.variance = []
        self.logits = []
        self.losses = []
        self.current_step = 0
        self.recorded_initial = False
        self.grad_before = None
        self.loss_value = None
        self.logits_sample = None

    def record_initial_state(self, model, optimizer):
        if not self.recorded_initial:
            W = model.transformer.wte.weight.data.clone().cpu().float()
            self.recorded_steps.append(0)
            self.embeddings.append(W)
            self.grads.append(torch.zeros_like(W))
            self.momentum.append(torch.zeros_like(W))
            self.variance.append(torch.zeros_like(W))
            self.logits.append(torch.zeros(self.vocab_size))
            self.losses.append(torch.tensor(float('nan')))
            self.recorded_initial = True
            self.current_step = 1

    def record_before_step(self, model, loss, logits):
        if self.current_step % self.record_every_n == 0:
            if model.transformer.wte.weight.grad is not None:
                self.grad_before = model.transformer.wte.weight.grad.clone().cpu().float()
            else:
                self.grad_before = torch.zeros(self.vocab_size, self.hidden_dim)
            self.loss_value = loss.item()
            self.logits_sample = logits[0, -1, :].detach().cpu().float()

    def record_after_step(self, model, optimizer):
        if self.current_step % self.record_every_n == 0:
            if self.grad_before is not None and self.loss_value is not None:
                W = model.transformer.wte.weight.data.clone().cpu().float()
                param = model.transformer.wte.weight
                if param in optimizer.state:
                    state = optimizer.state[param]
                    mom = state['exp_avg'].clone().cpu().float()
                    var = state['exp_avg_sq'].clone().cpu().float()
                else:
                    mom = torch.zeros_like(W)
                    var = torch.zeros_like(W)
                self.recorded_steps.append(self.current_step)
                self.embeddings.append(W)
                self.grads.append(self.grad_before)
                self.momentum.append(mom)
                self.variance.append(var)
                self.logits.append(self.logits_sample)
                self.losses.append(torch.tensor(self.loss_value))
                self.grad_before = None
                self.loss_value = None
                self.logits_sample = None
        self.current_step += 1

    def get_data(self):
        return {
            'recorded_steps': torch.tensor(self.recorded_steps, dtype=torch.long),
            'embeddings': torch.stack(self.embeddings) if self.embeddings else torch.tensor([]),
            'grads': torch.stack(self.grads) if self.grads else torch.tensor([]),
            'momentum': torch.stack(self.momentum) if self.momentum else torch.tensor([]),
            'variance': torch.stack(self.variance) if self.variance else torch.tensor([]),
            'logits': torch.stack(self.logits) if self.logits else torch.tensor([]),
            'losses': torch.stack(self.losses) if self.losses else torch.tensor([]),
        }


class InstrumentedTrainer(Trainer):
    def __init__(self, recorder, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorder = recorder
        self.last_logits = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        self.last_logits = outputs.logits
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.recorder.record_before_step(model, loss, self.last_logits)
        return loss

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time=None, **kwargs):
        self.recorder.record_after_step(model, self.optimizer)
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, **kwargs)


def write_legacy_file(path: Path, config, corpus, record_every_n: int = 1) -> Path:
    """Train ``config`` (a :class:`zarrec.reference.config.TrainConfig`) with the notebook's recorder; save its file."""
    from zarrec.reference.corpus import ByteDataset
    from zarrec.reference.model import build_model

    recorder = ComprehensiveRecorder(config.vocab_size, config.n_embd, record_every_n)
    args = TrainingArguments(
        output_dir=str(path.parent / "legacy-trainer"), max_steps=config.steps,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        weight_decay=config.weight_decay, adam_beta1=config.adam_beta1, adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon, logging_steps=1000, save_strategy="no", dataloader_num_workers=0,
        dataloader_pin_memory=False, seed=config.seed, report_to="none", disable_tqdm=True, use_cpu=True,
    )
    trainer = InstrumentedTrainer(recorder=recorder, model=build_model(config), args=args,
                                  train_dataset=ByteDataset(corpus, config.context))
    trainer.create_optimizer()
    recorder.record_initial_state(trainer.model, trainer.optimizer)
    trainer.train()
    recorded_data = recorder.get_data()
    live = sorted(set(corpus.tokens.tolist()))
    save_dict = {
        'recorded_steps': recorded_data['recorded_steps'],
        'dead_token_ids': torch.tensor(sorted(set(range(config.vocab_size)) - set(live)), dtype=torch.long),
        'live_token_ids': torch.tensor(live, dtype=torch.long),
        'embeddings': recorded_data['embeddings'],
        'grads': recorded_data['grads'],
        'momentum': recorded_data['momentum'],
        'variance': recorded_data['variance'],
        'logits': recorded_data['logits'],
        'losses': recorded_data['losses'],
        'init_sigma': torch.tensor(config.init_sigma, dtype=torch.float32),
        'learning_rate': torch.tensor(config.learning_rate, dtype=torch.float32),
        'weight_decay': torch.tensor(config.weight_decay, dtype=torch.float32),
        'adam_beta1': torch.tensor(config.adam_beta1, dtype=torch.float32),
        'adam_beta2': torch.tensor(config.adam_beta2, dtype=torch.float32),
        'init_method_code': torch.tensor(0, dtype=torch.int32),
    }
    save_file(save_dict, path)
    return path
