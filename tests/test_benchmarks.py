"""The benchmark script runs end to end (numbers are not checked: machines are noisy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "write_throughput.py"


def test_quick_benchmark_runs_every_section(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "r.json").read_text())
    assert {row["variant"] for row in results["training"]} == {"none", "in_ram_reference", "naive_append", "zarrec"}
    assert all(row["zarrec_mb_s"] > 0 and row["codec_mb_s"] > 0 for row in results["synthetic"])
    assert {row["recorder"] for row in results["memory"]} == {"zarrec", "in_ram_reference"}
    assert all(row["raw_mb_s"] > 0 for row in results["scaling"])
    for heading in ("Synthetic write throughput", "Training overhead", "Peak memory", "Scaling"):
        assert heading in result.stdout


def test_quick_legacy_conversion_benchmark_runs(tmp_path):
    script = SCRIPT.with_name("legacy_convert.py")
    result = subprocess.run([sys.executable, str(script), "--quick", "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results["median"]) == {"imports_only", "load_file", "load_and_save_file", "zarrec_import", "zarrec_export"}
    assert all(value > 0 for value in results["ratios"].values())


def test_quick_store_layout_benchmark_runs(tmp_path):
    script = SCRIPT.with_name("store_layout.py")
    result = subprocess.run([sys.executable, str(script), "--quick", "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "r.json").read_text())
    for scale in ("128x64", "5000x64"):
        reads = results[scale]["read"]
        assert set(reads) == {"token history", "one whole step", "speed() of one token", "realized_fraction().overall"}
        assert all(run["bytes read"] > 0 for runs in reads["token history"].values() for run in runs)
    assert set(results["commit"]) == {"6", "112"}
    assert "| 5000x64 | token history" in result.stdout
