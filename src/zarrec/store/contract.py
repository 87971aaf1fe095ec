"""The store contract: names, dimensions, descriptions and defaults of a zarrec store.

Everything that reads or writes a store imports its names from here, so the
layout documented in the README has exactly one definition in the code.

Layout of a store (Zarr v3 group)::

    step        (step,)              int64    the optimizer step of each row
    token, dim  (token,), (dim,)     int64    index coordinates
    live, char, count  (token,)               corpus statistics per token
    embeddings, grads, momentum, variance  (step, token, dim)  float32
    logits      (step, token)        float32
    probe_logits  (step, probe_position, token)  float32   with a probe (zarrec.capture.probe)
    loss, lr    (step,)              float32
    P, P.grad, P.<state key>  (step, P_row, P_col)  float32   any other parameter P chosen
                                                          (P_row: P's name as an identifier, "_row")

Every non-step dimension has an index coordinate (0..n-1), so ``.sel`` works on each.

Every step-indexed array is sharded (the Zarr v3 ``sharding_indexed`` codec): one shard
holds ``chunk_steps`` steps and every row; inside it, inner chunks split the first non-step
dimension (:func:`inner_chunk_rows`), so one row's history reads only its inner chunks.
Values are compressed with Blosc zstd + bit-shuffle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zarr.codecs import BloscCodec, Crc32cCodec

STEP = "step"
TOKEN = "token"
DIM = "dim"

# Data variables of the default (embedding) recording, with their non-step dims.
EMBEDDINGS = "embeddings"
GRADS = "grads"
MOMENTUM = "momentum"
VARIANCE = "variance"
LOGITS = "logits"
LOSS = "loss"
LR = "lr"
GRAD_NORM = "grad_norm"
GRAD_NORM_BEFORE_CLIPPING = "grad_norm_before_clipping"
# A fixed probe's logits (zarrec.capture.probe), at chosen positions of its input.
PROBE_LOGITS = "probe_logits"
PROBE_POSITION = "probe_position"
PROBE_INPUT = "probe_input"
# The random state after each step (zarrec.capture.random_state), where the store can be restored
# from: torch's CPU generator, and the accelerator's as "random_state_<device type>".
RANDOM_STATE = "random_state"
GENERATOR_ATTR = "generator"  # a random-state variable's attribute: the device type of its generator


def random_state_of(device_type: str) -> str:
    """The variable of the generator state of ``device_type`` (``cpu``: :data:`RANDOM_STATE`)."""
    return RANDOM_STATE if device_type == "cpu" else f"{RANDOM_STATE}_{device_type}"

VARIABLE_DIMS: dict[str, tuple[str, ...]] = {
    EMBEDDINGS: (TOKEN, DIM),
    GRADS: (TOKEN, DIM),
    MOMENTUM: (TOKEN, DIM),
    VARIANCE: (TOKEN, DIM),
    LOGITS: (TOKEN,),
    PROBE_LOGITS: (PROBE_POSITION, TOKEN),
    LOSS: (),
    LR: (),
    GRAD_NORM: (),
    GRAD_NORM_BEFORE_CLIPPING: (),
}

DESCRIPTIONS: dict[str, str] = {
    EMBEDDINGS: "input-embedding matrix after optimizer step t (step 0: initial matrix)",
    GRADS: "gradient used by optimizer step t, after accumulation and clipping",
    MOMENTUM: "AdamW exp_avg (first moment) after step t",
    VARIANCE: "AdamW exp_avg_sq (second moment) after step t",
    LOGITS: "logits of step t's batch at sequence 0, last position",
    LOSS: "mean training loss of step t's batch",
    LR: "learning rate used by optimizer step t",
    GRAD_NORM: "global norm √Σ‖g‖² of every trained parameter's gradient used by optimizer step t (after clipping)",
    GRAD_NORM_BEFORE_CLIPPING: (
        "global norm √Σ‖g‖² of every trained parameter's gradient at step t before clipping "
        "(NaN where the training loop gives no moment before clipping: the HF Trainer across processes, "
        "a plain loop that neither calls before_clipping() nor hands step() the norm clip_grad_norm_ returned)"
    ),
    PROBE_LOGITS: "logits of the fixed probe input with the weights after step t (NaN: not evaluated at step t)",
    STEP: "optimizer step (the Trainer's global_step after the step)",
    TOKEN: "token id",
    DIM: "embedding dimension",
}

# What can be recorded of a parameter: the parameter itself, its gradient, or any tensor the
# optimizer keeps for it (its state key, e.g. "exp_avg", "momentum_buffer", "exp_avg_sq_row").
PARAM = "param"
GRAD = "grad"
# The input embedding's quantities have the contract's names; others are "<param>.<quantity>".
EMBEDDING_VARIABLES = {PARAM: EMBEDDINGS, GRAD: GRADS, "exp_avg": MOMENTUM, "exp_avg_sq": VARIANCE}
# Array attributes naming what a variable was recorded from.
PARAM_ATTR = "param"
QUANTITY_ATTR = "quantity"
# Array attributes of every recorded quantity of a parameter: the optimizer's class name, and
# the hyperparameters of the parameter's param group (``weight_decay``, ``betas``, ``eps``,
# ``momentum``, ...; its learning rate is the ``lr`` variable times ``lr_ratio``, the ratio of
# its group's learning rate to the recorded one's when recording began).
OPTIMIZER_ATTR = "optimizer"
HYPERPARAMETERS_ATTR = "optimizer_hyperparameters"
LR_RATIO = "lr_ratio"
# Group attributes listing the recorded parameters and the quantities asked for (null: all).
PARAMS_ATTR = "recorded_params"
QUANTITIES_ATTR = "recorded_quantities"
SCHEDULE_ATTR = "recorded_every"
# The group of health statistics at every step (zarrec.capture.health), a zarrec store of its
# own inside the run's: each statistic along (step, param), the ``param`` coordinate naming the
# trained parameters; for each parameter P kept per row, "P.<statistic>" along (step, P's row dim).
STATISTICS_GROUP = "statistics"
PARAM_DIM = "param"
HEALTH_STATISTICS = (
    "param_norm", "grad_norm", "update_norm", "intended_norm", "update_dot_intended", "residual_norm",
    "momentum_norm", "cos_grad_momentum",
)
MOMENTUM_KEYS = ("exp_avg", "momentum_buffer")  # the optimizer state cos_grad_momentum uses
EMBEDDING_ATTR = "input_embedding"  # the group's attribute naming the model's input embedding, if it has one


def row_statistic(param: str, statistic: str) -> str:
    """The statistics group's variable of ``statistic`` of each row of parameter ``param``."""
    return f"{param}.{statistic}"


# Run attribute of a branch (zarrec train --branch-from): {"store", "step", "changed": {setting: [recorded, branch]}}.
BRANCHED_FROM_ATTR = "branched_from"
# Run attribute: for each dim recorded at chosen rows only (the rows lever), how many rows the
# parameter has; the dim's index coordinate holds the chosen ids.
ROWS_ATTR = "recorded_rows_of"


def variable_name(param: str, quantity: str, input_embedding: bool = False) -> str:
    """The store variable of a parameter's quantity: ``embeddings``, ``grads``, ``momentum``,
    ``variance`` for the input embedding; ``<param>``, ``<param>.grad``, ``<param>.<state key>``
    for any other parameter (e.g. ``transformer.h.0.mlp.c_fc.weight.exp_avg``)."""
    if input_embedding and quantity in EMBEDDING_VARIABLES:
        return EMBEDDING_VARIABLES[quantity]
    base = EMBEDDINGS if input_embedding else param
    return base if quantity == PARAM else f"{base}.{quantity}"


def parameter_dims(param: str, ndim: int, input_embedding: bool = False) -> tuple[str, ...]:
    """Dimension names of a parameter, shared by its gradient and same-shaped optimizer state:
    ``(token, dim)`` for the input embedding; for another parameter its name as an identifier
    (:func:`identifier`) with ``_row``, ``_col`` for a matrix, ``_dim<i>`` otherwise. One set
    per parameter, as xarray gives each dimension one size; the analysis
    (:func:`zarrec.analysis.parameter`) names them ``row``, ``col`` whichever parameter it is."""
    if input_embedding and ndim == 2:
        return (TOKEN, DIM)
    base = identifier(param)
    if ndim == 2:
        return (f"{base}_row", f"{base}_col")
    return tuple(f"{base}_dim{i}" for i in range(ndim))


def identifier(name: str) -> str:
    """``name`` as a Python identifier, for a dimension ``.sel`` takes as a keyword:
    ``model.layers.0.mlp.weight`` → ``model_layers_0_mlp_weight``."""
    text = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return text if text.isidentifier() else f"_{text}"


def describe_quantity(param: str, quantity: str) -> str:
    """The description attribute of a recorded quantity of a parameter."""
    if quantity == PARAM:
        return f"{param} after optimizer step t (step 0: initial value)"
    if quantity == GRAD:
        return f"gradient of {param} used by optimizer step t, after accumulation and clipping"
    return f"optimizer state {quantity!r} of {param} after step t (step 0: zeros)"


# Coordinates along `token` describing the corpus.
LIVE = "live"
CHAR = "char"
COUNT = "count"
TOKEN_COORDS = (LIVE, CHAR, COUNT)

COORD_DESCRIPTIONS: dict[str, str] = {
    LIVE: "the token occurs in the training corpus",
    CHAR: "printable label of the token's byte",
    COUNT: "occurrences of the token in the training corpus",
    PROBE_POSITION: "position in the probe input",
    PROBE_INPUT: "the probe's input token at this position",
}

# Array attributes.
SOURCE_DTYPE_ATTR = "source_dtype"  # the dtype the values had before being stored as float32
MANTISSA_BITS_ATTR = "mantissa_bits"  # values were rounded to this many mantissa bits (absent: exact)
STORED_DTYPE = "float32"

# Group attribute naming the library that wrote the store.
FORMAT_ATTR = "zarrec_format"
FORMAT_VERSION = 2  # 1: chunks whole along every non-step dim, rows reserved ahead (still read)

# Group attribute saying how the recording stands: {"state": ..., "reason": ..., "last_step": ...}.
# "recording" in a store no writer has open means the writer was killed (steps up to
# last_step of the last commit are complete; the step coordinate says which).
STATUS_ATTR = "zarrec_status"
RECORDING = "recording"
COMPLETE = "complete"
INTERRUPTED = "interrupted"  # stopped by a signal or an exception; every recorded step was written
FAILED = "failed"  # the writer could not write; steps after the last commit are lost
# Group attribute listing the steps a recording was resumed after (steps recorded after them were dropped).
RESUMED_ATTR = "zarrec_resumed_after"
# Attributes that may differ between a recording and its resumption.
# (the machine may change: the device, library versions)
RESUME_MAY_DIFFER = (
    "versions", "model_config.transformers_version", "device", "config.device", STATUS_ATTR, RESUMED_ATTR
)

# Steps per chunk, chosen from the first recorded step unless given. zarr-python's cost per
# chunk write is mostly fixed, so bigger chunks write faster, up to about 16 MB
# (benchmarks/README.md); the caps keep a staging buffer's memory and the steps a crash
# can lose small.
TARGET_CHUNK_BYTES = 16 * 2**20
STAGING_BUFFER_BYTES = 64 * 2**20
MAX_CHUNK_STEPS = 512
# Host memory for staging, by default: three slabs of a chunk (or of a part of one). A GPT-2-small
# embedding with its gradient and Adam moments is 618 MB a step: staged a part at a time.
STAGING_BYTES = 512 * 2**20


def auto_chunk_steps(sizes: Sequence[int], staged_itemsizes: Sequence[int], slab_bytes: int = STAGING_BUFFER_BYTES) -> int:
    """Steps per chunk for variables of ``sizes`` elements a step, staged at ``staged_itemsizes``
    bytes an element (their source dtype): the largest power of two that keeps a chunk of the
    largest variable (as float32) within ``TARGET_CHUNK_BYTES``, a chunk of every variable as
    staged within ``STAGING_BUFFER_BYTES`` and ``slab_bytes``, and at most ``MAX_CHUNK_STEPS``;
    at least 1."""
    stored_row = 4 * max(sizes, default=1)
    staged_row = sum(n * itemsize for n, itemsize in zip(sizes, staged_itemsizes))
    staged_fit = min(STAGING_BUFFER_BYTES, slab_bytes) // max(staged_row, 1)
    fit = min(TARGET_CHUNK_BYTES // max(stored_row, 1), staged_fit, MAX_CHUNK_STEPS)
    return 1 << (max(1, fit).bit_length() - 1)


# Bytes of one inner chunk of a shard, at most. One row's history reads one inner chunk per
# shard: 1/16 of the data at 128×64 (8 rows × 512 steps), 1/148 at 50257×768 (340 rows × 1
# step), where the target was 1/100. Smaller chunks cost more compressor calls a shard; at
# this size writing runs at 1.03× format 1's speed at 50257×768, 0.97× at 128×64 (benchmarks/README.md, "Store layout").
TARGET_INNER_CHUNK_BYTES = 2**20


def inner_chunk_rows(chunk_steps: int, rows: int, row_bytes: int) -> int:
    """Rows of one inner chunk of a shard of ``chunk_steps`` steps × ``rows`` rows of
    ``row_bytes`` bytes (as stored): the rows split evenly into the fewest inner chunks of at
    most :data:`TARGET_INNER_CHUNK_BYTES` (an inner chunk holds at least one row). The shard
    then extends past the array by fewer rows than it has inner chunks."""
    fit = max(1, TARGET_INNER_CHUNK_BYTES // max(chunk_steps * row_bytes, 1))
    count = -(-rows // fit)
    return -(-rows // count)


def divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (at least 1): the inner chunk rows
    of a shard that must hold exactly ``n`` rows (a rank's, in a sharded run)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


# The training thread may wait on the writer for this fraction of a chunk's time before the
# recorder warns, once, that the writer cannot keep up (naming the rates and the levers).
SLOW_WRITER_FRACTION = 0.05

# A small per-step array (loss, lr, step, a logits vector) is sharded by its own size: as many
# chunks' worth of steps as fit in this many bytes, not one file per chunk of the big arrays (a
# GPT-2-sized run commits every step: 10,000 steps would be 10,000 one-value files of each).
# A commit rewrites its last shard whole, its committed rows read back: at most this many bytes.
SMALL_SHARD_BYTES = 2**20
# The step array's attribute saying how many steps a commit holds (``chunk_steps``).
CHUNK_STEPS_ATTR = "chunk_steps"


def shard_steps(chunk_steps: int, row_bytes: int) -> int:
    """Steps per shard of an array of ``row_bytes`` a step (as stored): ``chunk_steps`` times
    the largest power of two that keeps the shard within :data:`SMALL_SHARD_BYTES` (times 1
    for an array whose chunk alone is larger: one shard per chunk)."""
    fit = SMALL_SHARD_BYTES // max(chunk_steps * row_bytes, 1)
    return chunk_steps * (1 << (max(1, fit).bit_length() - 1))


def default_compressor(typesize: int = 4) -> BloscCodec:
    """Blosc zstd level 3 with bit-shuffle over elements of ``typesize`` bytes: a standard
    Zarr v3 codec any reader has."""
    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=typesize)


def checksummed(compressor: Any) -> tuple[Any, Crc32cCodec]:
    """The bytes-to-bytes codecs zarrec writes an array with: ``compressor``, then the CRC32C of
    its output, so that zarr-python, tensorstore and zarrs raise on a damaged chunk rather than
    decode it (the shard index has its own CRC32C; it covers only the index)."""
    return (compressor, Crc32cCodec())


def along_step(dimension_names: Sequence[str] | None) -> bool:
    """Whether an array with these dimension names grows along ``step`` (data and ``step`` itself)."""
    return bool(dimension_names) and dimension_names[0] == STEP


def dims_of(name: str, ndim: int) -> tuple[str, ...]:
    """Non-step dimension names of a variable: the contract's, or ``<name>_dim<i>`` (``name`` as
    an identifier)."""
    if name in VARIABLE_DIMS and len(VARIABLE_DIMS[name]) == ndim:
        return VARIABLE_DIMS[name]
    return tuple(f"{identifier(name)}_dim{i}" for i in range(ndim))
