"""summarize(): steps and gaps, variables and sizes, tokens, loss, attributes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zarrec import ConfigError, Recorder
from zarrec.analysis.summary import summarize


def test_summary_of_a_real_run(float32_run):
    summary = summarize(float32_run.path)
    steps = float32_run.config.steps
    assert (summary.steps, summary.first_step, summary.last_step, summary.stride, summary.gaps) == (steps + 1, 0, steps, 1, [])
    names = [v.name for v in summary.variables]
    assert names == ["embeddings", "grad_norm", "grad_norm_before_clipping", "grads", "logits", "loss", "lr", "momentum",
                     "variance"]
    embeddings = summary.variables[0]
    assert embeddings.dims == ("step", "token", "dim") and embeddings.shape == (steps + 1, 128, 16)
    assert embeddings.raw_bytes == (steps + 1) * 128 * 16 * 4 and 0 < embeddings.stored_bytes < embeddings.raw_bytes
    assert summary.live_tokens + summary.dead_tokens == 128 and summary.live_tokens == len(set(open(float32_run.config.corpus, "rb").read()))
    assert summary.first_loss == pytest.approx(np.log(128), abs=1e-3) and summary.last_loss < summary.first_loss
    assert summary.attrs["learning_rate"] == 1e-3
    report = summary.report()
    for text in ("status     complete", "steps      31 recorded, 0..30", "gaps       none",
                 "embeddings                 (step: 31, token: 128, dim: 16)"):  # names padded to the longest
        assert text in report
    json.dumps(summary.to_dict())


def test_gaps_are_found_against_the_usual_stride(tmp_path):
    with Recorder(tmp_path / "r.zarr", chunk_steps=4) as recorder:
        for step in (0, 3, 6, 9, 15, 18, 27):
            recorder.record(step, x=torch.zeros(1))
    summary = summarize(tmp_path / "r.zarr")
    assert summary.stride == 3 and summary.gaps == [(12, 12), (21, 24)]
    assert "every 3" in summary.report() and "gaps       12, 21..24" in summary.report()
    assert summary.live_tokens is None and summary.first_loss is None


def test_gaps_of_a_scheduled_recording_are_the_kept_steps_it_lacks(tmp_path):
    """Every step to 4, then every 3rd: the change of stride is no gap, a missing kept step is."""
    with Recorder(tmp_path / "r.zarr", chunk_steps=4, attrs={"recorded_every": "1:4,3"}) as recorder:
        for step in (0, 1, 2, 3, 4, 6, 9, 18, 21):
            recorder.record(step, x=torch.zeros(1))
    summary = summarize(tmp_path / "r.zarr")
    assert summary.gaps == [(12, 15)] and summary.schedule == "1:4,3"
    assert "steps      9 recorded, 0..21, every 1:4,3" in summary.report()
    assert "gaps       12..15" in summary.report()


def test_a_branch_says_of_which_run_after_which_step_and_what_changed(tmp_path):
    branched = {"store": "run.zarr", "step": 150, "changed": {"learning_rate": [0.001, 0.003]}}
    with Recorder(tmp_path / "b.zarr", chunk_steps=4, attrs={"branched_from": branched}) as recorder:
        for step in (151, 152, 153):
            recorder.record(step, x=torch.zeros(1))
    report = summarize(tmp_path / "b.zarr").report()
    assert "steps      3 recorded, 151..153\ngaps       none\n" in report
    assert "branch     of run.zarr after step 150; changed: learning_rate 0.001 → 0.003" in report


def test_a_path_that_is_not_a_store_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a Zarr store"):
        summarize(tmp_path / "missing.zarr")


def test_the_status_says_how_the_recording_stands(tmp_path):
    recorder = Recorder(tmp_path / "r.zarr", chunk_steps=2)
    for step in range(3):
        recorder.record(step, x=torch.zeros(1))
    recorder.flush(wait=True)
    assert summarize(tmp_path / "r.zarr").status.startswith("recording: being written, or its writer was killed")
    recorder.close("terminated by SIGTERM")
    assert summarize(tmp_path / "r.zarr").status == "interrupted: terminated by SIGTERM (last step 2)"


def test_summary_names_the_statistics_group_and_its_steps(tmp_path):
    import zarrec

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with zarrec.ModelRecorder(tmp_path / "run.zarr", model, optimizer, params=["weight"], every=2) as recorder:
        for _ in range(4):
            model(torch.randn(2, 4)).sum().backward()
            optimizer.step()
            recorder.step()
            optimizer.zero_grad()
    summary = summarize(str(tmp_path / "run.zarr"))
    assert (summary.steps, summary.statistics_steps) == (3, 5)  # steps 0, 2, 4 in full; health at 0..4
    assert f'ds.zarrec.by_parameter(), or xarray.open_zarr("{tmp_path / "run.zarr"}/statistics")' in summary.report()
    assert summarize(str(tmp_path / "run.zarr" / "statistics")).statistics_steps is None  # it has none of its own
