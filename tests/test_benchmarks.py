"""The benchmark scripts run end to end (numbers are not checked: machines are noisy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run_quick(script: str, tmp_path, *arguments: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a benchmark script's ``--quick`` smoke run: what it printed, and the results it wrote."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", *arguments,
                             "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((tmp_path / "r.json").read_text())


def test_quick_benchmark_runs_every_section(tmp_path):
    result, results = run_quick("write_throughput.py", tmp_path, "--device", "cpu")
    assert {row["variant"] for row in results["training"]} == {"none", "in_ram_reference", "naive_append", "zarrec"}
    assert all(row["zarrec_mb_s"] > 0 and row["codec_mb_s"] > 0 for row in results["synthetic"])
    assert {row["recorder"] for row in results["memory"]} == {"zarrec", "in_ram_reference"}
    assert all(row["raw_mb_s"] > 0 for row in results["scaling"])
    for heading in ("Synthetic write throughput", "Training overhead", "Peak memory", "Scaling"):
        assert heading in result.stdout


def test_quick_legacy_conversion_benchmark_runs(tmp_path):
    _, results = run_quick("legacy_convert.py", tmp_path)
    assert set(results["median"]) == {"imports_only", "load_file", "load_and_save_file", "zarrec_import", "zarrec_export"}
    assert all(value > 0 for value in results["ratios"].values())


def test_quick_store_layout_benchmark_runs(tmp_path):
    result, results = run_quick("store_layout.py", tmp_path)
    for scale in ("128x64", "5000x64"):
        reads = results[scale]["read"]
        assert set(reads) == {"token history", "one whole step", "speed() of one token", "realized_fraction().overall"}
        assert all(run["bytes read"] > 0 for runs in reads["token history"].values() for run in runs)
    assert set(results["commit"]) == {"6", "112"}
    assert "| 5000x64 | token history" in result.stdout


def test_quick_precision_benchmark_runs(tmp_path):
    result, results = run_quick("precision.py", tmp_path)
    exact, ten, seven = results["128x64"]
    assert exact["max relative error"] == 0 and 0 < ten["max relative error"] <= 2**-11 and seven["max relative error"] <= 2**-8
    assert seven["bytes on disk"] < ten["bytes on disk"] < exact["bytes on disk"]
    assert "| 128x64 | 7 |" in result.stdout


def test_quick_scale_benchmark_runs_every_variant(tmp_path):
    result, results = run_quick("scale.py", tmp_path)
    rows = {row["variant"]: row for row in results["gpt2"]}
    assert set(rows) == {"none", "default", "no_statistics", "statistics_only", "every_10", "rows_1000", "mantissa_7", "recipe"}
    assert rows["default"]["mb_per_step"] > rows["recipe"]["mb_per_step"] > 0 == rows["none"]["mb_per_step"]
    assert {row["variant"] for row in results["fast_step"]} == {"none", "zarrec"}
    assert "## gpt2" in result.stdout and "## fast_step" in result.stdout


def test_quick_checksum_benchmark_runs(tmp_path):
    result, results = run_quick("checksums.py", tmp_path)
    assert set(results) == {"128x64", "5000x64"}
    assert all(len(r["MB/s"]["with"]) == len(r["MB/s"]["without"]) == 2 and r["median ratio"] > 0 for r in results.values())
    assert "| 5000x64 |" in result.stdout


def test_quick_long_reads_benchmark_asks_every_question(tmp_path):
    result, results = run_quick("long_reads.py", tmp_path)
    questions = results["stores"]["default"]["questions"]
    assert [row["question"] for row in questions] == [
        "by_parameter", "realized_fraction", "realized_fraction_full_state", "speed_of_one_token", "plot"
    ]
    assert results["steps"] == 50 and all(row["seconds"] > 0 and row["bytes_read_mb"] > 0 for row in questions)
    first = questions[0]  # (the quick run counts the store's bytes of its first question only: strace is slow)
    assert shutil.which("strace") is None or 0 < first["distinct_store_bytes_read_mb"] <= first["store_bytes_read_mb"] <= first["store_mb"]
    assert "| default | by_parameter |" in result.stdout

def test_quick_host_time_benchmark_times_every_recording(tmp_path):
    result, results = run_quick("host_time.py", tmp_path)
    assert set(results["recordings"]) == {"default", "default_norm_handed", "every_parameter", "no_statistics", "gradient_copies"}
    assert all(row["median_ms"] > 0 and row["steps"] == 30 for row in results["recordings"].values())
    assert "| default |" in result.stdout
