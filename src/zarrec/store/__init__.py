"""The store: what a zarrec store holds and how it is written, whatever wrote it.

The lowest layer: it knows Zarr and numpy, nothing of torch or of training.
:mod:`~zarrec.store.contract` names the arrays, dims and attributes every reader relies on;
:mod:`~zarrec.store.schedule` is the syntax of the steps a store holds;
:mod:`~zarrec.store.run_store` creates, reopens and commits a store (the commit order);
:mod:`~zarrec.store.shards` encodes whole shards; :mod:`~zarrec.store.lock` keeps one writer
per store.
"""
