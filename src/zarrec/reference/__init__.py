"""The reference experiment, an application of zarrec: the run of the notebook zarrec grew out of.

A byte-level GPT-2 (vocabulary 128, 64 dimensions, 2 layers) whose token embeddings start at
nearly one point, trained with the Hugging Face Trainer and recorded every step by
:class:`zarrec.ZarrecCallback`. Read top to bottom: :mod:`~zarrec.reference.config` (every
setting of ``zarrec train``), :mod:`~zarrec.reference.corpus` (the bytes it learns),
:mod:`~zarrec.reference.model` (the model and its initial embeddings),
:mod:`~zarrec.reference.train` (the training run, its checkpoints and its resumption).
The library (everything outside this package) knows nothing of it.
"""
