"""Hugging Face text towers on the mesh: a tiny XLM-R / mT5 text tower trains on 8 simulated
devices (2 data x 2 FSDP x 2 tensor) as on one, its parameters sharded by their logical names;
configs/xlmr_b32.py compiles for a v5e topology (libtpu, else skipped)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from clip_jax import compiled as compiled_lib
from clip_jax import config as config_lib
from clip_jax import input_pipeline, train
from clip_jax import topology as tpu
from clip_jax.data.synthetic import SyntheticSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import tiny  # noqa: E402

HF = {"xlm-roberta": {"model_type": "xlm-roberta", "vocab_size": 96, "hidden_size": 32,
                      "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                      "max_position_embeddings": 24, "type_vocab_size": 1, "pad_token_id": 1,
                      "layer_norm_eps": 1e-5, "hidden_act": "gelu"},
      "mt5": {"model_type": "mt5", "vocab_size": 96, "d_model": 32, "d_kv": 8, "d_ff": 64,
              "num_layers": 2, "num_heads": 4, "feed_forward_proj": "gated-gelu",
              "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16}}


def _config(tmp_path, kind: str, **mesh):
    d = tmp_path / kind
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(HF[kind]))
    c = tiny.get_config()
    c.model.name = ""
    c.model.open_clip_config = json.dumps({
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64,
                                        "patch_size": 8, "head_width": 32},
        "text_cfg": {"hf_model_name": str(d), "context_length": 16}})
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (mesh.get(k, 1) for k in ("data", "fsdp",
                                                                        "tensor"))
    return c


def _run(config, devices, steps):
    setup = train.build(config, devices)
    state = train.init_state(setup)
    step = train.make_train_step(setup)
    m = setup.model_cfg
    data = SyntheticSource(config.batch_size, m.vision.image_size, m.text.context_length,
                           m.text.vocab_size, config.data.synthetic_classes, 0.5, config.seed)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
        losses.append(float(metrics["loss"]))
    return state, np.array(losses)


@pytest.mark.slow  # two train-step compiles: 30-100 s on the shared 2-core host
@pytest.mark.parametrize("kind", ["xlm-roberta", "mt5"])
def test_hf_text_tower_on_8_devices_matches_one(tmp_path, kind):
    assert jax.device_count() >= 8
    state8, l8 = _run(_config(tmp_path, kind, data=2, fsdp=2, tensor=2), jax.devices()[:8], 3)
    state1, l1 = _run(_config(tmp_path, kind, data=1), jax.devices()[:1], 3)
    np.testing.assert_allclose(l8, l1, rtol=2e-4)
    for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-5)
    enc = state8.params["text"]["transformer"]
    assert enc["token_embedding"].sharding.spec == P("tensor", "fsdp")
    blk = enc["resblocks_0"]
    assert blk["attn"]["kernel_in"].sharding.spec == P("fsdp", None, "tensor", None)
    mlp = blk["mlp"]["wi_0" if kind == "mt5" else "c_fc"]["kernel"]
    assert mlp.sharding.spec == P("fsdp", "tensor")
    assert state8.params["text"]["proj_fc1"]["kernel"].sharding.spec == P("fsdp", "tensor")


def _recipe(name, arg):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def test_the_xlmr_recipe_resolves_to_open_clips_model():
    c = _recipe("xlmr_b32.py", "v5e-256")
    config_lib.validate(c)
    m = config_lib.resolve_model_config(c.model)
    t = m.text
    assert (t.family, t.hf.model_type, t.hf.pooler, t.hf.proj) == ("hf", "xlm-roberta",
                                                                   "mean_pooler", "mlp")
    assert (t.vocab_size, t.width, t.layers, t.pad_id, m.embed_dim) == (250002, 768, 12, 1, 512)
    assert tpu.recipe_topology(os.path.join(REPO, "configs", "xlmr_b32.py") + ":v5e-256") \
        == "v5e:16x16"


@pytest.mark.slow  # ~4 min on a busy 2-core host: XLM-R's 250k x 768 embedding
@pytest.mark.skipif(not tpu.libtpu_available(), reason="libtpu is not installed")
def test_the_xlmr_recipe_compiles_for_v5e():
    """configs/xlmr_b32.py's step (full XLM-R base vocabulary and widths, two blocks a tower,
    a batch of 64) compiled for v5e:2x2 by the TPU compiler, its shards as planned."""
    c = _recipe("xlmr_b32.py", "v5e-256")
    c.batch_size, c.mesh.data, c.mesh.fsdp = 64, 1, 4
    c.model.vision.layers = c.model.text.layers = 2
    setup = train.build(c, devices=tpu.topology_devices("v5e:2x2"))
    compiled, _ = compiled_lib.compile_step(setup)
    cost = compiled_lib.cost_of(compiled)
    assert cost["flops"] > 0
    emb = setup.state_shardings.params["text"]["transformer"]["token_embedding"]
    assert emb.spec == P(None, "fsdp")  # this mesh has no tensor axis
