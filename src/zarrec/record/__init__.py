"""Recording: named tensors, one row per step, into a store, off the training thread.

Knows tensors, not models: :class:`~zarrec.record.recorder.Recorder` is ``record(step, **tensors)``;
the modules beside it stage each step within a byte budget, write chunks from a background
thread, split the rows among the ranks of a sharded run and close what is open when the
process stops. Uses :mod:`zarrec.store` below it.
"""
