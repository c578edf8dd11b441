#!/usr/bin/env bash
# Install clip_jax with its test extras and run the whole suite (README: "run the tests").
# The torch-based comparison extra (torch==2.13.0 CPU + transformers) is installed when it can
# be; its tests skip cleanly where it cannot. So is 'tpu-aot' (libtpu: compile for TPU
# topologies on this CPU host, tests/test_plan.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m pip install -q --disable-pip-version-check -e '.[compare]' \
  || echo "note: optional extra 'compare' (torch==2.13.0, transformers) not installed; its tests skip"
python3 -m pip install -q --disable-pip-version-check -e '.[tpu-aot]' \
  || echo "note: optional extra 'tpu-aot' (jax[tpu], libtpu) not installed; the TPU compile tests skip"
ruff check clip_jax tests benchmarks configs
python3 -m pytest -q -p no:cacheprovider "$@"
