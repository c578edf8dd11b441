#!/usr/bin/env bash
# Install clip_jax with its test extras and run the whole suite (README: "run the tests").
# Arguments go to pytest (e.g. `bash scripts/test.sh tests/test_open_clip.py -x`).
#
# The torch-based comparison extras are alternatives (their torch pins differ); their tests skip
# cleanly where they are absent:
# - by default 'compare' (torch==2.13.0 CPU + transformers), installed when it can be;
# - with CLIP_JAX_COMPARE=1, 'open-clip' instead (torch==2.14.1, the ~6.7 GB CUDA build, with
#   torchvision 0.29.1, open-clip-torch 3.3.0 and transformers): open_clip itself is then run by
#   tests/test_open_clip.py. Asked for, it must install and import, else this script stops.
# An environment that holds torchvision is never given compare's torch 2.13.0: torchvision 0.29.1
# does not import beside it, and transformers' CLIPModel then fails (tests fail, not skip).
# 'tpu-aot' (libtpu: compile for TPU topologies on this CPU host, tests/test_plan.py) is
# installed when it can be.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_extra() { python3 -m pip install -q --disable-pip-version-check -e ".[$1]"; }
has_dist() { python3 -c 'import importlib.metadata as m, sys; m.distribution(sys.argv[1])' "$1" \
  2>/dev/null; }
pip_extra test
if [[ "${CLIP_JAX_COMPARE:-0}" != 0 ]]; then
  pip_extra open-clip
  python3 -c 'import open_clip, transformers; from transformers import CLIPModel' || {
    echo "error: CLIP_JAX_COMPARE=1, but open_clip / transformers do not import after installing" \
         "the 'open-clip' extra (above)" >&2
    exit 1
  }
elif has_dist torchvision; then
  echo "note: torchvision is installed, so the 'compare' extra (torch==2.13.0, beside which" \
       "torchvision does not import) is not; CLIP_JAX_COMPARE=1 installs the 'open-clip' extra"
else
  pip_extra compare \
    || echo "note: optional extra 'compare' (torch==2.13.0, transformers) not installed; its tests skip"
fi
pip_extra tpu-aot \
  || echo "note: optional extra 'tpu-aot' (jax[tpu], libtpu) not installed; the TPU compile tests skip"
ruff check clip_jax tests benchmarks configs examples
python3 -m pytest -q -p no:cacheprovider "$@"
