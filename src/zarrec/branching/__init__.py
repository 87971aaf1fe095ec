"""Branching: every recorded step of a store is a checkpoint. :func:`~zarrec.branching.restore.restore`
sets a live model and optimizer to a recorded step; the reference run branches from any step
(``zarrec train --branch-from``). Reads stores through :mod:`zarrec.store`.
"""
