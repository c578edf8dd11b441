#!/usr/bin/env bash
# Run the tests (README: "run the tests"; .ci/run calls this). Arguments go to pytest, e.g.
#   bash scripts/test.sh tests/test_open_clip.py -x
#   bash scripts/test.sh -m ''          # every test, the slow ones included
#   bash scripts/test.sh -m slow        # only the slow ones
#
# It makes (once) a virtual environment .venv/ with Python 3.12 or later (jax 0.12 needs it;
# CLIP_JAX_PYTHON=/path/to/python picks one), installs clip_jax there with the versions CI
# tested (constraints.txt) and these extras:
# - test (pytest, xdist, ruff) and onednn (oneDNN's CPU convolutions; their tests skip, saying
#   why, without the extra or a C++ compiler);
# - compare (torch 2.14.1, torchvision, open_clip, transformers: several GB) and tpu-aot
#   (libtpu: compile for TPU topologies on this CPU) when they install; without them their
#   tests skip. CLIP_JAX_COMPARE=0 leaves compare out.
# The default run leaves out the tests marked slow (multi-minute end-to-end runs) except the
# ones that guard a row of the README's "What survives what" table (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
find_python() {
  local c
  if [[ -n "${CLIP_JAX_PYTHON:-}" ]]; then
    python_ok "$CLIP_JAX_PYTHON" && { echo "$CLIP_JAX_PYTHON"; return; }
    echo "error: CLIP_JAX_PYTHON=$CLIP_JAX_PYTHON is not Python 3.12 or later" >&2; return 1
  fi
  for c in python3.12 python3.13 python3.14 python3; do
    command -v "$c" >/dev/null && python_ok "$c" && { command -v "$c"; return; }
  done
  if command -v pyenv >/dev/null; then  # installed but not selected
    for c in "$(pyenv root)"/versions/3.1[2-9]*/bin/python3; do
      python_ok "$c" && { echo "$c"; return; }
    done
  fi
  echo "error: clip_jax needs Python 3.12 or later (jax 0.12); none found on the PATH" \
       "(set CLIP_JAX_PYTHON)" >&2
  return 1
}

VENV=.venv
if ! python_ok "$VENV/bin/python"; then
  py=$(find_python)
  rm -rf "$VENV"
  "$py" -m venv "$VENV"
  echo "made $VENV with $("$VENV/bin/python" --version)"
fi
PY=$PWD/$VENV/bin/python
# (pip's notes on find-links folders without the package are left out of the log)
pip_install() {
  "$PY" -m pip install -q --disable-pip-version-check -c constraints.txt "$@" \
    2> >(grep -v "^WARNING: Location 'file:.*' is ignored" >&2)
}
optional=(tpu-aot)
[[ "${CLIP_JAX_COMPARE:-1}" != 0 ]] && optional+=(compare)
# one resolution for everything; where an optional extra cannot install, each on its own
if ! pip_install -e ".[test,onednn,$(IFS=,; echo "${optional[*]}")]"; then
  pip_install -e ".[test,onednn]"
  for extra in "${optional[@]}"; do
    pip_install -e ".[$extra]" \
      || echo "note: optional extra '$extra' did not install; its tests skip, saying why"
  done
fi
echo "installed in $((SECONDS - started)) s: $("$PY" -c 'import jax, flax; print(
  "jax", jax.__version__, "flax", flax.__version__)')"
"$VENV/bin/ruff" check clip_jax tests benchmarks configs examples
# One persistent XLA compilation cache for the run, shared by both workers and every training
# subprocess the tests start (many compile the same tiny programs): a fresh folder each run, so
# nothing carries over between runs; JAX_COMPILATION_CACHE_DIR set by the caller is kept.
if [[ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]]; then
  JAX_COMPILATION_CACHE_DIR=$(mktemp -d -t clip_jax_xla_cache.XXXXXX)
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_COMPILATION_CACHE_DIR
# two workers (pytest-xdist) by default: CLIP_JAX_TEST_WORKERS=0 runs in this process
"$PY" -m pytest -q -p no:cacheprovider -n "${CLIP_JAX_TEST_WORKERS:-2}" "$@"
