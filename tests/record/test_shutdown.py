"""Stopping a process that records: SIGTERM, SIGINT, an exception, an exit without close(); real subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import xarray as xr

from zarrec import Recorder
from zarrec.store import contract
from zarrec.record.shutdown import close_open_recorders

# Records steps 0..9 with 8 steps per chunk, so steps 8 and 9 are only staged, then waits or fails.
CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from zarrec import Recorder
    recorder = Recorder(sys.argv[1], chunk_steps=8)
    for step in range(10):
        recorder.record(step, x=torch.full((3,), float(step)))
    print("recorded", flush=True)
    if sys.argv[2] == "raise":
        raise RuntimeError("boom")
    if sys.argv[2] == "exit":
        sys.exit(0)
    while True:  # like a training loop, back in Python often: a signal that lands on another thread
        time.sleep(0.05)  # (torch starts one at import) is acted upon when the main thread next runs Python
    """
)


def run_child(out, ending: str, send: signal.Signals | None = None) -> subprocess.CompletedProcess:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out), ending], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "recorded"
    if send is not None:
        child.send_signal(send)
    stdout, stderr = child.communicate(timeout=60)
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


@pytest.mark.parametrize(
    ("ending", "send", "reason"),
    [
        ("wait", signal.SIGTERM, "terminated by SIGTERM"),
        ("wait", signal.SIGINT, "interrupted by SIGINT (Ctrl-C)"),
        ("raise", None, "RuntimeError: boom"),
        ("exit", None, "the process exited without closing the recorder"),
    ],
)
def test_every_staged_step_is_written_and_the_store_says_why(tmp_path, ending, send, reason):
    out = tmp_path / "run.zarr"
    result = run_child(out, ending, send)
    if send is signal.SIGTERM:
        assert result.returncode == 128 + signal.SIGTERM
    ds = xr.open_zarr(out)
    np.testing.assert_array_equal(ds.step, np.arange(10))  # 8 and 9 were staged, not yet written
    np.testing.assert_array_equal(ds.x.values, np.repeat(np.arange(10.0), 3).reshape(10, 3))
    status = ds.attrs[contract.STATUS_ATTR]
    assert status["state"] == contract.INTERRUPTED and status["reason"] == reason and status["last_step"] == 9


def test_a_clean_close_marks_the_store_complete(tmp_path):
    with Recorder(tmp_path / "run.zarr") as recorder:
        recorder.record(0, x=torch.zeros(2))
    status = xr.open_zarr(tmp_path / "run.zarr").attrs[contract.STATUS_ATTR]
    assert status["state"] == contract.COMPLETE and status["last_step"] == 0


def test_an_exception_through_the_with_block_marks_the_store_interrupted(tmp_path):
    with pytest.raises(ValueError, match="diverged"):
        with Recorder(tmp_path / "run.zarr") as recorder:
            recorder.record(0, x=torch.zeros(2))
            raise ValueError("diverged")
    status = xr.open_zarr(tmp_path / "run.zarr").attrs[contract.STATUS_ATTR]
    assert status["state"] == contract.INTERRUPTED and status["reason"] == "ValueError: diverged"


def test_close_open_recorders_frees_a_store_left_open_in_a_notebook(tmp_path):
    out = tmp_path / "run.zarr"
    abandoned = Recorder(out)
    abandoned.record(0, x=torch.zeros(2))
    close_open_recorders()
    status = xr.open_zarr(out).attrs[contract.STATUS_ATTR]
    assert status["state"] == contract.INTERRUPTED
    with Recorder(out, resume_from=0) as again:  # the lock was released
        again.record(1, x=torch.ones(2))


# Records steps 0..9 on a disk whose every write takes 0.1 s, then fails: closing takes seconds.
CLOSING_SLOWLY = textwrap.dedent(
    """
    import asyncio, sys, torch
    from zarr.storage import LocalStore, WrapperStore
    from zarrec import Recorder

    class SlowDisk(WrapperStore):
        def _with_store(self, store):
            return SlowDisk(store)

        async def set(self, key, value):
            await asyncio.sleep(0.1)
            await self._store.set(key, value)

    with Recorder(SlowDisk(LocalStore(sys.argv[1])), chunk_steps=8) as recorder:
        for step in range(10):
            recorder.record(step, x=torch.full((3,), float(step)))
        print("closing", flush=True)
        raise RuntimeError("boom")
    """
)


def test_a_sigterm_while_closing_waits_until_the_store_says_why_it_stopped(tmp_path):
    """torchrun sends SIGTERM to the other ranks when one fails, often while they close their
    recorder: the store is still marked, with the exception that stopped it, before the process ends."""
    out = tmp_path / "run.zarr"
    child = subprocess.Popen([sys.executable, "-c", CLOSING_SLOWLY, str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "closing"
    time.sleep(0.3)  # inside close(): the staged steps are being written
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM, stderr
    ds = xr.open_zarr(out)
    np.testing.assert_array_equal(ds.step, np.arange(10))
    status = ds.attrs[contract.STATUS_ATTR]
    assert status["state"] == contract.INTERRUPTED and status["reason"] == "RuntimeError: boom"
