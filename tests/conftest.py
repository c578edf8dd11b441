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


def import_open_clip_hub(tmp_path, state_dict, oc_cfg):
    """An open_clip hub folder (``tmp_path/hub``: ``state_dict`` as safetensors, ``oc_cfg`` as
    its ``model_cfg``) imported through the CLI, ``export import --from open_clip``, into a
    bundle: (hub, bundle)."""
    import json

    from safetensors import torch as safetensors_torch

    from clip_jax import export

    hub, bundle = tmp_path / "hub", tmp_path / "bundle"
    hub.mkdir()
    safetensors_torch.save_file(state_dict, hub / "open_clip_model.safetensors")
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": oc_cfg}))
    assert export.main(["import", "--from", "open_clip", "--src", str(hub), "--out",
                        str(bundle)]) == 0
    return hub, bundle


def export_open_clip_bundle(tmp_path, bundle):
    """``export open_clip`` of ``bundle`` through the CLI into ``tmp_path/oc``: (that folder,
    its state dict, its ``model_cfg``)."""
    import json

    from safetensors import torch as safetensors_torch

    from clip_jax import export

    out = tmp_path / "oc"
    assert export.main(["open_clip", "--checkpoint", str(bundle), "--out", str(out)]) == 0
    return (out, safetensors_torch.load_file(out / "open_clip_model.safetensors"),
            json.loads((out / "open_clip_config.json").read_text())["model_cfg"])
