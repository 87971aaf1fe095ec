"""The reference experiment's configuration: every setting of ``zarrec train``, with its checks.

Kept free of torch so the command line starts quickly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zarrec.errors import ConfigError
from zarrec.store.schedule import StepSchedule

DTYPES = ("bfloat16", "float32")
INITS = ("f32_to_bf16", "pure_bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Trainer optimizers (TrainingArguments.optim) whose state differs: AdamW's two moments, SGD's
# momentum buffer, Adafactor's factored second moment.
OPTIMIZERS = ("adamw_torch", "sgd", "adafactor")
# The health statistics of every parameter at every step (zarrec.capture.health): all of them,
# the norms only (no copy of the parameters), or none.
STATISTICS = ("all", "norms", "none")


# Sizes past which a run cannot finish on any machine, refused before anything starts.
_LIMITS = (
    ("steps", 10**9, "a billion optimizer steps"),
    ("context", 16_384, "attention's memory grows with its square"),
    ("batch_size", 65_536, "sequences a step"),
    ("gradient_accumulation", 65_536, "micro-batches a step"),
    ("n_embd", 65_536, "dimensions"),
    ("n_layer", 1_024, "layers"),
)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the reference experiment (defaults reproduce the notebook)."""

    vocab_size: int = 128
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 2
    context: int = 128
    batch_size: int = 32
    gradient_accumulation: int = 1
    steps: int = 10_000
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optimizer: str = "adamw_torch"
    sgd_momentum: float = 0.9
    max_grad_norm: float = 1.0
    seed: int = 42
    dtype: str = "bfloat16"
    init: str = "f32_to_bf16"
    init_sigma: float = 1e-5
    device: str = "auto"
    corpus: str | None = None
    every: int | str = 1  # every N-th step, or a schedule such as "1:1000,10" (zarrec.store.schedule)
    chunk_steps: int | None = None  # None: chosen by the Recorder from the recorded shapes
    mantissa_bits: int | None = None  # round recorded tensors to this many mantissa bits; None: exact
    params: tuple[str, ...] | None = None  # glob patterns over parameter names; None: the input embedding
    quantities: tuple[str, ...] | None = None  # param, grad, optimizer state keys; None: all
    rows: str | None = None  # tokens of the embedding to record: "live", "A:B" or "i,j,..."; None: all
    probe: str | None = None  # a fixed text whose logits are evaluated every probe_every recorded steps
    probe_positions: tuple[int, ...] | None = None  # None: every position of the probe
    probe_every: int = 1
    statistics: str = "all"  # one of STATISTICS

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot work."""
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not supported; use one of {list(DTYPES)}")
        if self.init not in INITS:
            raise ConfigError(f"init {self.init!r} is not supported; use one of {list(INITS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not supported; use one of {list(DEVICES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is not supported; use one of {list(OPTIMIZERS)}")
        if self.statistics not in STATISTICS:
            raise ConfigError(f"statistics {self.statistics!r} is not supported; use one of {list(STATISTICS)}")
        StepSchedule.parse(self.every)
        positive = ("vocab_size", "n_embd", "n_layer", "n_head", "context", "batch_size", "gradient_accumulation",
                    "steps", "chunk_steps", "probe_every")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, limit, why in _LIMITS:
            if getattr(self, name) > limit:
                raise ConfigError(f"{name} must be at most {limit:,} ({why}), got {getattr(self, name):,}")
        if self.mantissa_bits is not None and not 1 <= self.mantissa_bits <= 22:
            raise ConfigError(f"mantissa_bits must be between 1 and 22 (float32 keeps 23), got {self.mantissa_bits}")
        self.token_rows([True] * self.vocab_size)
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 < self.vocab_size <= 256:
            raise ConfigError(f"vocab_size must be between 1 and 256 for a byte-level model, got {self.vocab_size}")

    def token_rows(self, live: Sequence[bool]) -> list[int] | slice | None:
        """:attr:`rows` as the recorder takes them: the ``live`` tokens, a slice, or ids."""
        if self.rows is None:
            return None
        if self.rows == "live":
            return [token for token, is_live in enumerate(live) if is_live]
        try:
            if ":" in self.rows:
                start, stop = (int(part) if part else None for part in self.rows.split(":"))
                return slice(start, stop)
            return [int(token) for token in self.rows.split(",")]
        except ValueError:
            raise ConfigError(f"rows must be 'live', a range such as 0:64 or ids such as 1,5,9; got {self.rows!r}") from None
