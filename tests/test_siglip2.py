"""The SigLIP 2 recipe (configs/siglip2_b16.py, configs/siglip2_demo.py): the demo composition
trains through its switch on the demo corpus (boxes and views from the real pipeline, every
term's loss part logged from its step); the B/16 recipe, depth-scaled, compiles its switched-on
program for a small TPU topology; the plan's per-term shares equal what removing each term
saves (clip_jax/plan_terms.py)."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from clip_jax import compiled, plan, plan_terms, train
from clip_jax import topology as tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs",
                                                                     f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # two compiles of the whole composition (about 1-3 minutes): `-m slow` runs it
def test_the_demo_recipe_trains_through_its_switch(tmp_path):
    c = _load("siglip2_demo").get_config()
    assert (c.silc.weight, c.tips.weight) == (0.25, 0.0625)
    assert c.model.decoder.loc_bins == 32 and c.caption.masked_pred_prob == 0.5
    assert c.ema.start_step == 320 == round(0.8 * c.total_steps)
    c.data.demo = str(tmp_path / "demo")
    c.data.demo_train_samples = 96
    c.batch_size, c.total_steps, c.log_every_steps = 16, 5, 1
    c.ema.start_step = 4  # the switch: round(0.8 * 5)
    c.model.vision.layers = c.model.text.layers = c.model.decoder.layers = 1
    c.eval.every_steps, c.eval.at_end, c.checkpoint.every_steps = 0, False, 0
    c.logging.tensorboard = False
    train.train(c, str(tmp_path / "run"), jax.devices()[:1])
    rows = {r["step"]: r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl"))
            if "loss" in r}
    assert sorted(rows) == [1, 2, 3, 4, 5]
    for s, r in rows.items():
        assert np.isfinite(r["loss"]) and r["loss_caption"] > 0, r
        on = s >= 5  # 1-based step 5 is the 0-based step 4: the switch
        assert ("loss_silc" in r) == on and ("loss_tips" in r) == on, (s, sorted(r))


def _small_b16(batch=32):
    """configs/siglip2_b16.py at depth 1 and a 4,096-token vocabulary on 4 chips."""
    c = _load("siglip2_b16").get_config()
    c.batch_size = batch
    c.mesh.data, c.mesh.fsdp = 2, 2
    c.model.vision.layers = c.model.text.layers = c.model.decoder.layers = 1
    c.model.text.vocab_size = 4096
    c.data.source = "synthetic"
    return c


@pytest.mark.slow  # one compile of the whole composition: about 2 minutes on this host
def test_the_b16_recipe_compiles_its_switched_on_program():
    """Depth 1, 4,096 tokens, 8 images per chip on v5e:2x2: the program with every term on
    (the batch carries the views and boxes) compiles and fits."""
    if not tpu.libtpu_available():
        pytest.skip("needs libtpu (compile-only TPU devices)")
    c = _small_b16()
    assert set(plan_terms.ablations(c)) == {"decoder", "silc", "tips", "contrastive"}
    devices = tpu.topology_devices("v5e:2x2")
    setup = train.build(c, devices=tpu.ordered(devices, c))
    _, batch = compiled.abstract_inputs(setup)
    assert batch["view_local"].shape == (32, 8, 112, 112, 3)  # the switched-on program
    assert batch["view_global"].shape == (32, 256, 256, 3) and batch["boxes"].shape[1] == 4
    r = plan.compiled_plan(c, "v5e:2x2", with_cost=False)
    assert r["fits"] and r["hbm_gib_per_chip"] > r["state_gib_per_chip"] > 0


@pytest.mark.slow  # five compiles of the composition (minutes on a loaded 2-core host)
def test_the_plan_reports_what_removing_each_term_saves(monkeypatch):
    if not tpu.libtpu_available():
        pytest.skip("needs libtpu (compile-only TPU devices)")
    c = _small_b16()
    c.model.scan = False  # one compile per plan: XLA's count is then the whole step's
    seen, real = [], plan.compiled_plan

    def recording(config, *a, **kw):
        seen.append((config, real(config, *a, **kw)))
        return seen[-1][1]

    monkeypatch.setattr(plan, "compiled_plan", recording)
    full = plan.plan(c, "v5e:2x2", terms=True)
    t = full["term_shares"]
    assert full["fits"] and list(t["terms"]) == ["decoder", "silc", "tips", "contrastive"]
    by_term = dict(zip(t["terms"], (r for _, r in seen[1:]), strict=True))
    for term, r in by_term.items():
        keep = r["xla_tflops_per_chip"] / full["xla_tflops_per_chip"]
        np.testing.assert_allclose(t["terms"][term]["flops_share"],
                                   keep if term == "contrastive" else 1 - keep, rtol=1e-12)
        assert 0 < t["terms"][term]["flops_share"] < 1
    # the ablated programs lack their term: fewer params without the decoder and the heads
    assert by_term["decoder"]["params"] < full["params"]
    assert by_term["contrastive"]["params"] < by_term["silc"]["params"] < full["params"]
    np.testing.assert_allclose(sum(x["flops_share"] for x in t["terms"].values())
                               + t["shared"]["flops_share"], 1.0)
    assert "per-term shares" in plan.format_table(full)
    with pytest.raises(tpu.PlanError, match="no term besides the contrastive loss"):
        plan.plan(compiled.with_overrides(c, **plan_terms.ablations(c)["contrastive"]),
                  "v5e:2x2", terms=True)
