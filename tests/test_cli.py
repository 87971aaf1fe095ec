"""The zarrec command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import xarray as xr

TINY = ["--steps", "3", "--context", "16", "--batch-size", "2", "--dtype", "float32", "--device", "cpu", "--quiet"]


def zarrec(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zarrec.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_train_records_and_summarises(tmp_path, small_corpus):
    out = tmp_path / "run.zarr"
    result = zarrec("train", "--out", str(out), "--corpus", str(small_corpus), "--chunk-steps", "2", *TINY)
    assert result.returncode == 0, result.stderr
    assert "recorded 4 steps (steps 0..3)" in result.stdout
    assert "MB on disk (compression" in result.stdout and f'xarray.open_zarr("{out}")' in result.stdout
    ds = xr.open_zarr(out)
    np.testing.assert_array_equal(ds.step, [0, 1, 2, 3])
    assert ds.attrs["corpus_name"] == small_corpus.name


def test_existing_out_is_refused_then_overwritten(tmp_path, small_corpus):
    out = tmp_path / "run.zarr"
    args = ["train", "--out", str(out), "--corpus", str(small_corpus), *TINY]
    assert zarrec(*args).returncode == 0
    before = xr.open_zarr(out).embeddings.values
    refused = zarrec(*args)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"zarrec: error: {out} already exists; pass --resume to continue it, --overwrite (overwrite=True) to replace it, "
        "or choose another output path"
    ]
    np.testing.assert_array_equal(xr.open_zarr(out).embeddings.values, before)  # untouched
    assert zarrec(*args, "--overwrite").returncode == 0


def test_missing_and_empty_corpus_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for corpus in (tmp_path / "missing.txt", empty):
        result = zarrec("train", "--out", str(tmp_path / "run.zarr"), "--corpus", str(corpus), *TINY)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "corpus" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "run.zarr").exists()


def test_bad_numbers_are_one_line_errors(tmp_path):
    result = zarrec("train", "--out", str(tmp_path / "run.zarr"), "--steps", "0")
    assert result.returncode == 2 and result.stderr.strip() == "zarrec: error: steps must be at least 1, got 0"


def test_info_reports_and_speaks_json(float32_run):
    import json

    text = zarrec("info", str(float32_run.path))
    assert text.returncode == 0, text.stderr
    assert "steps      31 recorded, 0..30" in text.stdout and "learning_rate" in text.stdout
    machine = zarrec("info", str(float32_run.path), "--json")
    data = json.loads(machine.stdout)
    assert data["steps"] == 31 and data["gaps"] == [] and data["compression_ratio"] > 1
    assert data["attrs"]["adam_beta2"] == 0.999


def test_plot_writes_the_figures(tmp_path, float32_run):
    result = zarrec("plot", str(float32_run.path), "--out", str(tmp_path / "figures"), "--quiet")
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in (tmp_path / "figures").glob("*.png"))
    assert written == ["logits.png", "loss_lr.png", "norms_speed.png", "realized_fraction.png", "trajectories.png"]
    assert len(result.stdout.splitlines()) == 5


def test_info_and_plot_of_a_missing_store_are_one_line_errors(tmp_path):
    for command in (["info", str(tmp_path / "nope.zarr")], ["plot", str(tmp_path / "nope.zarr"), "--out", str(tmp_path)]):
        result = zarrec(*command)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"zarrec: error: {tmp_path / 'nope.zarr'} is not a Zarr store; pass the path of a store written by zarrec"
        ]
