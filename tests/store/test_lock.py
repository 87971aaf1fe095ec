"""StoreLock: one writer per store, stale locks of dead writers taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from zarrec import Recorder, StoreLockedError
from zarrec.store.lock import StoreLock, lock_path


def test_the_lock_of_a_store_inside_another_lies_beside_the_outermost(tmp_path):
    """The statistics group of a run being recorded: every reader listing the run's hierarchy
    finds only Zarr nodes (the project's tests turn zarr's warning about others into errors)."""
    import zarr

    import zarrec

    model = torch.nn.Embedding(5, 3)
    model.get_input_embeddings = lambda: model
    optimizer = torch.optim.AdamW(model.parameters())
    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer) as recorder:
        assert lock_path(tmp_path / "run.zarr" / "statistics") == tmp_path / "run.zarr.statistics.lock"
        assert sorted(p.name for p in tmp_path.glob("*.lock")) == ["run.zarr.lock", "run.zarr.statistics.lock"]
        run = zarr.open_group(tmp_path / "run.zarr", mode="r", use_consolidated=False)
        members = dict(run.members(max_depth=None))  # (a warning about an unknown object: an error here)
        assert "statistics" in members and not any(name.endswith(".lock") for name in members)
        model(torch.tensor([1])).sum().backward()
        optimizer.step()
        recorder.step()
    assert not list(tmp_path.glob("*.lock"))


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path):
    out = tmp_path / "run.zarr"
    first = Recorder(out)
    first.record(0, x=torch.zeros(2))
    assert lock_path(out).is_file() and lock_path(out).parent == tmp_path  # beside the store, not in it
    with pytest.raises(StoreLockedError, match=rf"{out} is being written by process {os.getpid()}"):
        Recorder(out, resume_from=0)
    first.close()
    assert not lock_path(out).exists()
    with Recorder(out, resume_from=0) as second:  # free again
        second.record(1, x=torch.ones(2))


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path):
    store = tmp_path / "run.zarr"
    store.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from zarrec.store.lock import StoreLock; StoreLock.acquire({str(store)!r}, 'run'); "
         "print('locked', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"is being written by process {holder.pid}"):
            StoreLock.acquire(store, "run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    StoreLock.acquire(store, "run").release()  # the dead writer's lock is stale
    assert not lock_path(store).exists()


def test_a_lock_from_another_host_is_respected(tmp_path):
    lock_path(tmp_path).write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "yesterday"}))
    with pytest.raises(StoreLockedError, match="locked by process 1 on host elsewhere .*delete .*\\.lock"):
        StoreLock.acquire(tmp_path, "run")


def test_an_empty_lock_is_respected_while_young_and_taken_over_when_old(tmp_path):
    lock = lock_path(tmp_path)
    lock.write_text("")  # its writer died between creating and filling it, or is filling it now
    with pytest.raises(StoreLockedError, match="being locked by another writer right now"):
        StoreLock.acquire(tmp_path, "run")
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    StoreLock.acquire(tmp_path, "run").release()
