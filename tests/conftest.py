"""Test-wide setup: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# the project's shared data files (not committed): ../shared/data, or CLIP_JAX_SHARED_DATA
SHARED_DATA = Path(os.environ.get("CLIP_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
BPE_VOCAB = SHARED_DATA / "bpe_simple_vocab_16e6.txt.gz"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def bpe_vocab_path():
    if not BPE_VOCAB.exists():
        pytest.skip(f"CLIP BPE vocabulary not found at {BPE_VOCAB}")
    return str(BPE_VOCAB)
