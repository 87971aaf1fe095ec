#!/usr/bin/env bash
# The accelerator checks of issue 27 as one script, for a machine with a GPU (or a Mac):
#     bash benchmarks/device_check.sh cuda     # ~8 minutes on one H100
#     bash benchmarks/device_check.sh mps      # on Apple silicon
# It runs the device tests (the CUDA sync-debug test, bitwise staging), then the host time per
# step and the large-model and fast-step comparisons on that device; results land in benchmarks/.
set -euo pipefail
device="${1:-cuda}"
cd "$(dirname "$0")/.."
python -m pytest -q -p no:cacheprovider tests/capture/test_model_recorder.py tests/record/test_device_queue.py
python benchmarks/host_time.py --device "$device" --json "benchmarks/host_time_results_$device.json"
python benchmarks/scale.py --sections gpt2,fast_step --device "$device" --json "benchmarks/scale_results_$device.json"
