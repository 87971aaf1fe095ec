"""The capture: what a training step gives, taken from a model and its optimizer.

:class:`~zarrec.capture.model_recorder.ModelRecorder` is the one per-step capture that every
adapter and a plain loop use; the modules beside it choose what to record (parameters,
quantities, rows, steps) and compute what is recorded beside the tensors (the probe's logits,
row statistics, the run's attributes). Records through :mod:`zarrec.record`.
"""
