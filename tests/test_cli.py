"""The zarrec command line, run as a real subprocess (and in-process where only its answer matters)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import LAYER

from zarrec.cli import main

TINY = ["--steps", "3", "--context", "16", "--batch-size", "2", "--dtype", "float32", "--device", "cpu", "--quiet"]


def zarrec(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zarrec.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_train_records_and_summarises(tmp_path, small_corpus):
    out = tmp_path / "run.zarr"
    result = zarrec("train", "--out", str(out), "--corpus", str(small_corpus), "--chunk-steps", "2", *TINY)
    assert result.returncode == 0, result.stderr
    assert "recorded 4 steps (steps 0..3)" in result.stdout
    assert "a recorded step as float32, 2 steps a chunk; 4 recorded steps: " in result.stdout  # the cost line, up front
    assert "MB on disk (compression" in result.stdout and f'xarray.open_zarr("{out}")' in result.stdout
    ds = xr.open_zarr(out)
    np.testing.assert_array_equal(ds.step, [0, 1, 2, 3])
    assert ds.attrs["corpus_name"] == small_corpus.name


def test_train_records_the_live_tokens_only(tmp_path, small_corpus):
    out = tmp_path / "run.zarr"
    result = zarrec("train", "--out", str(out), "--corpus", str(small_corpus), "--rows", "live", *TINY)
    assert result.returncode == 0, result.stderr
    ds = xr.open_zarr(out)
    live = np.flatnonzero(np.bincount(np.frombuffer(small_corpus.read_bytes(), np.uint8), minlength=128) > 0)
    assert 0 < ds.sizes["token"] == len(live) < 128
    np.testing.assert_array_equal(ds.token, live)
    assert ds.live.all() and ds.attrs["recorded_rows_of"] == {"token": 128}
    assert ds.logits.sizes["token"] == len(live)


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
    assert written == ["logits.png", "loss_lr.png", "norms_speed.png", "parameters.png", "realized_fraction.png",
                       "trajectories.png"]
    assert len(result.stdout.splitlines()) == len(written)


def test_plot_draws_the_parameters_named(tmp_path, layers_run, capsys):
    assert main(["plot", str(layers_run), "--out", str(tmp_path), "--quiet", "--param", LAYER]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert str(tmp_path / "realized_fraction.png") in printed and str(tmp_path / "trajectories.png") in printed
    assert not any(line.startswith("skipped") for line in printed)  # without --param: "name one"


def test_info_and_plot_of_a_missing_store_are_one_line_errors(tmp_path):
    for command in (["info", str(tmp_path / "nope.zarr")], ["plot", str(tmp_path / "nope.zarr"), "--out", str(tmp_path)]):
        result = zarrec(*command)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"zarrec: error: {tmp_path / 'nope.zarr'} is not a Zarr store; pass the path of a store written by zarrec"
        ]


def committed_steps(out) -> int:
    """Steps committed to a store, read as a reader would (0 before its first commit)."""
    document = out / "zarr.json"
    try:
        members = json.loads(document.read_text())["consolidated_metadata"]["metadata"]
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return 0
    return members["step"]["shape"][0] if "step" in members else 0


def start_training(out, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zarrec.cli", "train", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(out, process: subprocess.Popen, steps: int) -> None:
    deadline = time.monotonic() + 240
    while committed_steps(out) < steps:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def assert_same_recording(run, reference, steps: int) -> None:
    """The first ``steps`` steps of two stores are bitwise equal, variable by variable."""
    for name in ("embeddings", "grads", "momentum", "variance", "logits", "loss", "lr"):
        np.testing.assert_array_equal(run[name].values[:steps], reference[name].values[:steps], err_msg=name)


def test_kill_9_leaves_a_consistent_prefix_and_resume_completes_the_run(tmp_path, small_corpus):
    """A real SIGKILL mid-run: the store opens, holds a contiguous prefix bitwise equal to an
    uninterrupted run, and --resume (from a Trainer checkpoint) completes it to that run exactly."""
    run = ["--corpus", str(small_corpus), "--steps", "160", "--chunk-steps", "8", "--save-steps", "10", *TINY[2:]]
    reference = tmp_path / "reference.zarr"
    assert zarrec("train", "--out", str(reference), *run).returncode == 0
    out = tmp_path / "run.zarr"
    training = start_training(out, *run)
    wait_for_steps(out, training, 60)
    training.kill()  # SIGKILL: nothing runs, no flush, no status
    training.wait()
    killed = xr.open_zarr(out)
    kept = killed.step.size
    np.testing.assert_array_equal(killed.step, np.arange(kept))
    assert_same_recording(killed, xr.open_zarr(reference), kept)
    assert killed.attrs["zarrec_status"]["state"] == "recording"  # it never got to say otherwise

    resumed = zarrec("train", "--out", str(out), "--resume", "--quiet")  # the recorded options
    assert resumed.returncode == 0, resumed.stderr
    ds, expected = xr.open_zarr(out), xr.open_zarr(reference)
    np.testing.assert_array_equal(ds.step, np.arange(161))
    assert_same_recording(ds, expected, 161)
    (checkpoint,) = ds.attrs["zarrec_resumed_after"]
    assert checkpoint % 10 == 0 and checkpoint <= kept - 1
    assert ds.attrs["zarrec_status"]["state"] == "complete"


@pytest.mark.parametrize(("send", "code", "reason"), [(signal.SIGINT, 130, "interrupted by SIGINT (Ctrl-C)"),
                                                      (signal.SIGTERM, 143, "terminated by SIGTERM")])
def test_a_signal_flushes_every_step_and_says_so_in_one_line(tmp_path, small_corpus, send, code, reason):
    out = tmp_path / "run.zarr"
    training = start_training(out, "--corpus", str(small_corpus), "--steps", "100000", "--chunk-steps", "8", *TINY[2:])
    wait_for_steps(out, training, 20)
    training.send_signal(send)
    _, stderr = training.communicate(timeout=120)
    assert training.returncode == code
    assert stderr.strip().splitlines() == [
        f"zarrec: stopped: {reason}; what was recorded is in {out} (continue with --resume)"
    ]
    ds = xr.open_zarr(out)
    status = ds.attrs["zarrec_status"]
    assert status["state"] == "interrupted" and status["reason"] == reason
    np.testing.assert_array_equal(ds.step, np.arange(status["last_step"] + 1))  # the staged steps too
    assert status["last_step"] >= 20


def tree(directory) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def test_a_refused_overwrite_of_a_store_being_written_changes_nothing(tmp_path, small_corpus):
    """The lock is checked before anything is touched: the running run's store and checkpoints survive."""
    out, checkpoints = tmp_path / "run.zarr", tmp_path / "run.zarr.checkpoints"
    run = ["--corpus", str(small_corpus), "--steps", "100000", "--chunk-steps", "8", "--save-steps", "5", *TINY[2:]]
    training = start_training(out, *run)
    try:
        wait_for_steps(out, training, 16)
        while len(list(checkpoints.glob("checkpoint-*"))) < 2:
            assert training.poll() is None
            time.sleep(0.01)
        training.send_signal(signal.SIGSTOP)  # frozen: what is on disk now must stay exactly so
        time.sleep(0.5)  # a write under way when it stopped has landed
        before = tree(tmp_path)
        refused = zarrec("train", "--out", str(out), "--overwrite", *run)
        assert refused.returncode == 2
        assert len(refused.stderr.splitlines()) == 1 and "is being written by process" in refused.stderr
        assert tree(tmp_path) == before
    finally:
        training.send_signal(signal.SIGCONT)
        training.kill()
        training.wait()


def test_bad_input_is_one_line_naming_problem_and_fix(tmp_path, small_corpus, capsys):
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "short.txt").write_text("too short")
    (tmp_path / "a-file").write_text("x")
    corpus = ["--corpus", str(small_corpus)]
    cases = {
        "looks binary (11% of its bytes are control characters); pass a text file":
            ["--corpus", str(tmp_path / "binary.bin")],
        "corpus short.txt has 9 usable bytes, fewer than one window of 16; use a longer corpus or a shorter context":
            ["--corpus", str(tmp_path / "short.txt")],
        f"{tmp_path / 'a-file'} exists and is not a directory; choose another output path":
            ["--out", str(tmp_path / "a-file"), *corpus],
        "chunk_steps must be at least 1, got -1": ["--chunk-steps", "-1", *corpus],
        "--save-steps must be at least 1, got 0": ["--save-steps", "0", *corpus],
        "--flush-every must be at least 1, got 0": ["--flush-every", "0", *corpus],
        "mantissa_bits must be between 1 and 22 (float32 keeps 23), got 30": ["--mantissa-bits", "30", *corpus],
        "device mps is not available on this machine; use --device auto or cpu": [*corpus, "--device", "mps"],
        f"there is no recording to resume at {tmp_path / 'new.zarr'}; drop --resume to start one": ["--resume"],
        "--resume continues the store and --overwrite replaces it; pass one of them": ["--resume", "--overwrite"],
        "(glob patterns, e.g. '*.attn.*')": ["--params", "*.attn.*", "*.mlp.c_fc*", "lm_head.*", *corpus],
        "every must be a positive number of steps, got 0; write a number (every N-th step) or phases like '1:1000,10' "
        "(every step up to 1000, then every 10th)": ["--every", "0", *corpus],
        "cannot read the step schedule '1:10,x'; write a number (every N-th step) or phases like '1:1000,10' "
        "(every step up to 1000, then every 10th)": ["--every", "1:10,x", *corpus],
        # Optimizers create their state at the first step: this one is refused then (the store says so).
        "AdamW keeps no 'momentum_buffer' for transformer.wte.weight; its state holds 'step', 'exp_avg', 'exp_avg_sq': "
        "record quantities from 'param', 'grad' and those":
            ["--quantities", "grad", "momentum_buffer", *corpus, "--out", str(tmp_path / "adamw.zarr")],
    }
    for message, args in cases.items():  # (in this process: a process each would cost a torch import each)
        out = ["--out", str(tmp_path / "new.zarr")] if "--out" not in args else []
        assert exit_code(["train", *out, *TINY, *args]) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("zarrec: error: ") and lines[0].endswith(message), (args, lines)
    assert not (tmp_path / "new.zarr").exists()
    params_error = zarrec("train", "--out", str(tmp_path / "new.zarr"), *TINY, "--params", "lm_head.*").stderr
    assert "'lm_head.*' matches no parameter of the model; it has: transformer.wte.weight, transformer.wpe.weight, " \
           "transformer.h.0.ln_1.weight" in params_error  # tied to the embedding, so not a parameter of its own
    debug = zarrec("--debug", "train", "--out", str(tmp_path / "new.zarr"), "--every", "0", *TINY)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_every_bad_input_of_a_first_contact_is_one_line_and_exit_2(tmp_path, small_corpus, float32_run, capsys):
    """Inputs a new user types, each once a traceback: now one line naming the fix, and nothing written."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    run, train = str(float32_run.path), ["train", *TINY, "--corpus", str(small_corpus)]
    cases = {
        "--out is an empty path; pass a path": [*train, "--out", ""],
        "--checkpoint-dir": [*train, "--out", str(tmp_path / "new.zarr"), "--checkpoint-dir", str(tmp_path / "a-file")],
        "/proc takes no new files": [*train, "--out", "/proc/t.zarr"],
        "Protocol not known: foo": [*train, "--out", "foo://x"],
        "steps must be at most 1,000,000,000": [*train, "--out", str(tmp_path / "new.zarr"), "--steps", str(10**20)],
        "context must be at most 16,384": [*train, "--out", str(tmp_path / "new.zarr"), "--context", "100000"],
        "argument --steps: invalid int value: '1e20'": [*train, "--out", str(tmp_path / "new.zarr"), "--steps", "1e20"],
        "is an array, not a store": ["info", f"{run}/embeddings"],
        "cannot be opened as a Zarr store": ["info", str(tmp_path / "bad.zarr")],
        "exists and is not a directory": ["plot", run, "--out", str(tmp_path / "a-file")],
        "/proc takes no new files ": ["plot", run, "--out", "/proc/figs"],
        "a branch needs both --branch-from (the recorded run) and --branch-step (its step to start after)":
            [*train, "--out", str(tmp_path / "new.zarr"), "--branch-from", run],
        "--resume continues a run and --branch-from starts a new one from another; pass one of them":
            [*train, "--out", str(tmp_path / "new.zarr"), "--resume", "--branch-from", run, "--branch-step", "2"],
        "--branch-step 3 is not a step before the branch's last (3, --steps); pass a step from 0 to 2":
            [*train, "--out", str(tmp_path / "new.zarr"), "--branch-from", run, "--branch-step", "3"],
        f"{run} did not record transformer.wpe.weight; a store to restore from records every parameter and its optimizer "
        "state (params='*', every quantity: --params '*')":
            [*train, "--out", str(tmp_path / "new.zarr"), "--branch-from", run, "--branch-step", "2"],
        "is not a directory; create it first": ["export", run, str(tmp_path / "missing" / "run.safetensors")],
        "is a directory; pass the path of the .safetensors file": ["export", run, str(tmp_path / "a-dir"), "--overwrite"],
    }
    before = sorted(tmp_path.rglob("*"))
    for message, args in cases.items():
        assert exit_code(args) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("zarrec: error: ") and message in err, (args, err)
    assert sorted(tmp_path.rglob("*")) == before  # no store, no checkpoint folder, no .partial

    quiet = subprocess.run(f"{sys.executable} -m zarrec.cli info {run} | head -1", shell=True, capture_output=True,
                           text=True, timeout=120)
    assert quiet.stdout.startswith("store") and quiet.stderr == ""  # the reader left early: no BrokenPipeError


def exit_code(args) -> int:
    """``zarrec ARGS`` run in this process (argparse exits; the commands return)."""
    try:
        return main(args)
    except SystemExit as exit:
        return exit.code


def test_resume_refuses_a_different_configuration_naming_it(tmp_path, small_corpus):
    out = tmp_path / "run.zarr"
    assert zarrec("train", "--out", str(out), "--corpus", str(small_corpus), "--save-steps", "1", *TINY).returncode == 0
    before = xr.open_zarr(out).embeddings.values
    result = zarrec("train", "--out", str(out), "--resume", "--batch-size", "3", "--quiet")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "was recorded with a different configuration; it differs in " in result.stderr
    assert "config.batch_size: recorded 2, now 3" in result.stderr
    assert "per_device_train_batch_size: recorded 2, now 3" in result.stderr
    np.testing.assert_array_equal(xr.open_zarr(out).embeddings.values, before)  # untouched


def test_two_ddp_processes_write_one_store_equal_to_one_process_with_their_batch(tmp_path, small_corpus):
    """torchrun, 2 CPU processes, gloo: rank 0 writes; the store is the run of one process whose batch is
    both ranks' batches (DDP averages their gradients), and complete."""
    ddp, single = tmp_path / "ddp.zarr", tmp_path / "single.zarr"
    args = ["--corpus", str(small_corpus), "--steps", "6", "--context", "16", "--dtype", "float32", "--device", "cpu",
            "--quiet", "--save-steps", "3"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "zarrec.cli"]
    result = subprocess.run([*launch, "train", "--out", str(ddp), "--batch-size", "2", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("recorded 7 steps (steps 0..6)") == 1  # one summary: one writer
    assert zarrec("train", "--out", str(single), "--batch-size", "4", *args).returncode == 0
    two, one = xr.open_zarr(ddp).load(), xr.open_zarr(single).load()
    assert two.attrs["world_size"] == 2 and two.attrs["per_device_train_batch_size"] == 2
    assert two.attrs["zarrec_status"]["state"] == "complete"
    np.testing.assert_array_equal(two.step, np.arange(7))
    for name in ("embeddings", "grads", "momentum", "variance"):
        assert two[name][1:].notnull().all(), name
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(two.lr, one.lr)
    assert sorted(p.name for p in (tmp_path / "ddp.zarr.checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]


def test_train_info_and_plot_with_an_s3_store(tmp_path, small_corpus, s3_bucket):
    url = f"{s3_bucket}/run.zarr"
    result = zarrec("train", "--out", url, "--corpus", str(small_corpus), *TINY)
    assert result.returncode == 0, result.stderr
    assert f"recorded 4 steps (steps 0..3) in {url}" in result.stdout
    info = zarrec("info", url, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["steps"] == 4
    assert zarrec("plot", url, "--out", str(tmp_path / "figures"), "--quiet").returncode == 0
    assert any((tmp_path / "figures").glob("*.png"))
    refused = zarrec("train", "--out", url, "--corpus", str(small_corpus), *TINY)
    assert refused.returncode == 2 and f"{url} already exists" in refused.stderr


def test_import_and_export_round_trip_and_refuse_bad_files_in_one_line(tmp_path, legacy_file):
    from safetensors.torch import load_file

    out, back = tmp_path / "run.zarr", tmp_path / "back.safetensors"
    imported = zarrec("import", str(legacy_file), str(out), "--quiet")
    assert imported.returncode == 0, imported.stderr
    assert "recorded 31 steps (steps 0..31)" in imported.stdout
    exported = zarrec("export", str(out), str(back), "--quiet")
    assert exported.returncode == 0 and exported.stdout.strip() == str(back)
    assert load_file(back)["embeddings"].equal(load_file(legacy_file)["embeddings"])
    (tmp_path / "notes.txt").write_text("not safetensors")
    cases = {
        ("import", str(tmp_path / "notes.txt"), str(tmp_path / "new.zarr")): "is not a safetensors file",
        ("import", str(legacy_file), str(out)): f"{out} already exists; pass --overwrite to replace it",
        ("export", str(out), str(back)): f"{back} already exists; pass --overwrite to replace it or choose another file",
        ("export", str(tmp_path / "nothing.zarr"), str(tmp_path / "x.safetensors")): "nothing.zarr",
    }
    for args, message in cases.items():
        result = zarrec(*args, "--quiet")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (args, lines)


def test_a_format_1_store_opens_analyses_and_converts_but_is_not_resumed(tmp_path):
    """A store written by the last format-1 zarrec (tests/data/README.md)."""
    from zarrec import ConfigError, Recorder

    store = tmp_path / "format1.zarr"
    shutil.copytree(Path(__file__).parent / "data" / "format1_store", store)
    ds = xr.open_zarr(store)
    assert ds.attrs["zarrec_format"] == 1 and ds.step.values.tolist() == list(range(7))
    assert ds.char.values[ord("a")] == "a"
    assert float(ds.zarrec.realized_fraction().overall.isel(step=-1)) > 0  # analyses
    info = zarrec("info", str(store), "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["steps"] == 7, info.stderr
    plotted = zarrec("plot", str(store), "--out", str(tmp_path / "figures"), "--quiet")
    assert plotted.returncode == 0 and len(list((tmp_path / "figures").glob("*.png"))) == 6, plotted.stderr  # every figure
    exported = zarrec("export", str(store), str(tmp_path / "legacy.safetensors"))
    assert exported.returncode == 0, exported.stderr
    with pytest.raises(ConfigError, match="is a zarrec format 1 store; this zarrec resumes format 2 only"):
        Recorder(store, resume_from=3)
    resumed = zarrec("train", "--out", str(store), "--resume")
    assert resumed.returncode == 2 and "format 1" in resumed.stderr and "Traceback" not in resumed.stderr
    np.testing.assert_array_equal(xr.open_zarr(store).embeddings.values, ds.embeddings.values)  # untouched


@pytest.mark.parametrize("kind", ["README plain loop", "README values", "Trainer, layers only", "Trainer, SGD", "Lightning"])
def test_info_and_plot_on_every_kind_of_store(kind, request, tmp_path):
    """Every kind of store a zarrec recorder writes: info reports it, plot draws what applies and
    says in one line why it skipped each other figure; exit 0, no traceback."""
    from zarrec.analysis import plots

    store = {
        "README plain loop": lambda: request.getfixturevalue("readme_stores") / "run.zarr",
        "README values": lambda: request.getfixturevalue("readme_stores") / "values.zarr",
        "Trainer, layers only": lambda: request.getfixturevalue("layers_run"),
        "Trainer, SGD": lambda: request.getfixturevalue("sgd_run"),
        "Lightning": lambda: request.getfixturevalue("lightning_run"),
    }[kind]()
    info = zarrec("info", str(store))
    assert info.returncode == 0 and "variables" in info.stdout and not info.stderr, info.stderr
    plotted = zarrec("plot", str(store), "--out", str(tmp_path / "figures"), "--quiet")
    assert plotted.returncode == 0 and "Traceback" not in plotted.stderr, plotted.stderr
    written = sorted(path.stem for path in (tmp_path / "figures").glob("*.png"))
    skipped = [line.removeprefix("skipped ") for line in plotted.stdout.splitlines() if line.startswith("skipped ")]
    assert sorted(written + [line.split(":")[0] for line in skipped]) == sorted(plots.FIGURES)
    assert "loss_lr" in written or kind == "README values"
    assert "parameters" in written or kind == "README values"  # no optimizer there: nothing to realize
    assert all(len(line) < 400 for line in skipped)  # one line each, with its reason
