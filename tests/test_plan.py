"""clip_jax.plan (the train step compiled for a TPU topology on this CPU host) and
clip_jax.flops (analytic step FLOPs, checked against XLA's count of unrolled CPU compiles).

The TPU tests need libtpu (``pip install -e '.[tpu-aot]'``, which scripts/test.sh tries) and
skip without it; they use the tiny config on ``v5e:2x2`` only (big topologies: docs/benchmarks.md).
"""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from clip_jax import compiled as compiled_lib
from clip_jax import config as config_lib
from clip_jax import flops, models, plan, recipes, sharding, train
from clip_jax import topology as tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(
    not tpu.libtpu_available(),
    reason="libtpu is not installed (pip install -e '.[tpu-aot]'): no TPU compiler to ask")


def _recipe(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


def _cli(*args, timeout=600):
    env = dict(os.environ)
    env.pop("JAX_PLATFORMS", None)  # the CLI must choose the CPU backend by itself
    return subprocess.run([sys.executable, "-m", "clip_jax.plan", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs


def test_tower_flops_match_published_vit_counts():
    # timm's GMACs (fvcore) for the ViT image towers at 224 px: B/32 4.41, B/16 17.58,
    # L/14 81.08 (x2 = FLOPs); the text tower of B-32 is 12 blocks of width 512 over 77 tokens.
    for name, gmacs in (("ViT-B-32", 4.41), ("ViT-B-16", 17.58), ("ViT-L-14", 81.08)):
        got = flops.tower_flops(models.get_model_config(name))["vision"] / 2e9
        assert got == pytest.approx(gmacs, rel=0.01), name
    text = flops.tower_flops(models.get_model_config("ViT-B-32"))["text"]
    assert text == pytest.approx(12 * (24 * 77 * 512**2 + 4 * 77**2 * 512) + 2 * 512 * 512)


@pytest.mark.parametrize("name", ["RN50", "convnext_base"])
def test_conv_tower_flops_match_xla(name, monkeypatch):
    """The conv towers' analytic forward FLOPs against XLA's count of the image tower (no scan
    there, so XLA counts every layer): within 4% (XLA leaves the padded taps of the 3x3
    convolutions and the element-wise work out or in; timm's ConvNeXt-B is 15.4 GMACs). On
    XLA's convolutions: XLA does not count the oneDNN custom calls CPU runs otherwise."""
    monkeypatch.setenv("CLIP_JAX_CONV", "xla")
    cfg = models.get_model_config(name)
    model, size = models.CLIP(cfg), cfg.vision.image_size
    fn = jax.jit(lambda p, x: model.apply(models.variables(p), x,
                                          method=models.CLIP.encode_image))
    cost = fn.lower(models.abstract_params(cfg), jax.ShapeDtypeStruct(
        (1, size, size, 3), jnp.float32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert flops.tower_flops(cfg)["vision"] == pytest.approx(cost["flops"], rel=0.04), name


def _small(remat, accum, loss, impl, batch=64):
    c = config_lib.base_config()
    c.model.name = "tiny"
    for tower in (c.model.vision, c.model.text):
        tower.width, tower.mlp_dim, tower.layers, tower.heads = 128, 512, 2, 4
    c.model.embed_dim = 64
    c.model.remat = remat if isinstance(remat, str) else ("full" if remat else "none")
    c.model.scan = False
    c.batch_size, c.accum_steps, c.loss, c.loss_impl = batch, accum, loss, impl
    if loss == "siglip":
        c.model.init_logit_bias = -10.0
    return c


@pytest.mark.parametrize("remat,accum,loss,impl,patch_dropout", [
    (False, 1, "clip", "dense", 0.0),
    (True, 1, "siglip", "blockwise", 0.0),
    (True, 2, "clip", "dense", 0.0),
    (False, 1, "clip", "dense", 0.5),  # the vision blocks see 9 of 17 tokens
])
def test_analytic_flops_match_xla_on_an_unrolled_compile(remat, accum, loss, impl,
                                                        patch_dropout):
    c = _small(remat, accum, loss, impl)
    c.model.vision.patch_dropout = patch_dropout
    setup = train.build(c, devices=jax.devices()[:1])
    state, batch = compiled_lib.abstract_inputs(setup)
    with jax.set_mesh(setup.mesh):
        compiled = train.make_train_step(setup).jitted.lower(state, batch).compile()
    xla = compiled_lib.cost_of(compiled)["flops"]
    f = flops.train_step_flops(setup.model_cfg, c.batch_size, remat, accum, loss, impl)
    expected = f.hardware
    if accum > 1:
        # the gradient cache's two micro-batch loops are lax.scans, whose body XLA counts
        # once: it sees 1/accum of the tower work (the loss runs once, outside them)
        expected = (f.hardware - f.loss) / accum + f.loss
    # XLA also counts element-wise work (LayerNorm, GELU, softmax, AdamW): a few % here
    if remat:
        # XLA's CPU compiler drops part of the recompute (it reuses the forward's qkv
        # projection; seen in the optimized HLO), so on CPU the count lies between no
        # recompute and the full one; the TPU compile runs all of it (the test below)
        no_redo = (f.model + (accum - 1) * f.forward) / accum if accum > 1 else f.model
        assert no_redo <= xla <= 1.06 * expected, (xla, expected, f)
    else:
        assert 1.0 <= xla / expected <= 1.06, (xla, expected, f)
    assert f.model < f.hardware if (remat or accum > 1) else f.model == pytest.approx(
        f.hardware, rel=1e-3)


@pytest.mark.slow
@needs_libtpu
def test_analytic_remat_recompute_matches_the_tpu_compile():
    """The TPU compiler runs the recompute ``flops`` counts: its extra FLOPs with remat (an
    unrolled compile, so no scan undercount) equal the analytic ``remat`` term within 15%
    (XLA also recomputes element-wise work), and the totals agree within 3%."""
    counted = {}
    for remat in (False, True):
        c = _small(remat, 1, "clip", "dense", batch=256)
        c.mesh.data, c.mesh.fsdp = 1, 4
        setup = train.build(c, devices=tpu.topology_devices("v5e:2x2"))
        compiled, _ = compiled_lib.compile_step(setup)
        counted[remat] = compiled_lib.cost_of(compiled)["flops"] * 4  # per-chip program x 4 chips
    f = flops.train_step_flops(setup.model_cfg, 256, True, 1, "clip", "dense")
    assert counted[True] == pytest.approx(f.hardware, rel=0.03), (counted, f)
    assert counted[True] - counted[False] == pytest.approx(f.remat, rel=0.15), (counted, f)


def test_flops_reject_an_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss"):
        flops.train_step_flops(models.get_model_config("tiny"), 8, loss="triplet")


# ---------------------------------------------------------------------------------------------
# Topologies, the fallback, the CLI's bad input


def test_parse_topology():
    assert tpu.parse_topology("v5e:16x16") == ("v5e", (16, 16))
    assert tpu.parse_topology("v4:4x4x2") == ("v4", (4, 4, 2))
    for bad in ("v9:2x2", "v5e-256", "v5e:16", ""):
        with pytest.raises(tpu.PlanError, match="unknown topology"):
            tpu.parse_topology(bad)


def test_without_libtpu_it_falls_back_to_the_eval_shape_plan(monkeypatch):
    monkeypatch.setattr(tpu, "libtpu_available", lambda: False)
    r = plan.plan(_recipe("vit_b32_laion400m.py", "v5e-256"), "v5e:16x16")
    assert r["method"] == "eval_shape" and "libtpu is not installed" in r["note"]
    assert r["chips"] == 256 and r["fits"] and r["mesh"] == {"data": 16, "fsdp": 16, "tensor": 1}
    assert plan.format_table(r).startswith("note: libtpu is not installed")


def test_cli_rejects_an_unknown_topology_in_one_line():
    out = _cli("--config", "configs/tiny.py", "--topology", "v9:2x2", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: unknown topology 'v9:2x2': expected CHIP:AxB or CHIP:AxBxC with CHIP one of "
        "v4, v5e, v5p, v6e (e.g. v5e:16x16, v4:4x4x2)"]


def test_every_tpu_recipe_names_its_topology():
    for name in ("vit_b16_laion400m.py", "vit_b32_laion400m.py", "vit_l14_laion400m.py",
                 "siglip_b16_80k.py", "rn50_laion400m.py"):
        for platform, topology in (("v4-64", "v4:4x4x2"), ("v5e-256", "v5e:16x16")):
            arg = f"{os.path.join(REPO, 'configs', name)}:{platform}"
            assert tpu.recipe_topology(arg) == topology, (name, platform)
            chips = len(tpu.topology_devices(topology)) if tpu.libtpu_available() else None
            assert chips in (None, recipes.PLATFORMS[platform][0])
    naflex = os.path.join(REPO, "configs", "siglip2_naflex_b16.py")  # v5e-256 only
    assert tpu.recipe_topology(f"{naflex}:v5e-256") == "v5e:16x16"


def test_the_siglip2_naflex_recipe_plans_five_buckets_of_32k_patches_per_chip():
    """configs/siglip2_naflex_b16.py: the paper's buckets, tokens // bucket images rounded to
    the 256 chips (32k at the base length 256), about 32k patches per chip at every bucket."""
    c = _recipe("siglip2_naflex_b16.py", "v5e-256")
    config_lib.validate(c)
    shapes = plan.naflex_buckets(c, 256)
    assert shapes == [(65536, 128), (32768, 256), (14336, 576), (10496, 784), (8192, 1024)]
    for images, length in shapes:
        assert images % 256 == 0 and 0.95 * 32768 <= images * length / 256 <= 32768
    m = config_lib.resolve_model_config(c.model)
    assert (m.vision.family, m.text.vocab_size, m.text.context_length) == ("naflex", 256000, 64)


# ---------------------------------------------------------------------------------------------
# Compiled for TPU (libtpu, no TPU)


def _tiny(batch):
    c = _recipe("tiny.py")
    c.batch_size = batch
    return c


@needs_libtpu
def test_tiny_on_v5e_2x2_compiles_and_its_arguments_are_the_planned_shards():
    devices = tpu.topology_devices("v5e:2x2")
    assert len(devices) == 4 and devices[0].platform == "tpu"
    setup = train.build(_tiny(512), devices=devices)
    compiled, _ = compiled_lib.compile_step(setup)
    mem = compiled.memory_analysis()
    _, batch = compiled_lib.abstract_inputs(setup)
    specs = (compiled_lib.specs_of(setup.state_shardings),
             {"image": P(sharding.BATCH_AXES), "text": P(sharding.BATCH_AXES)})
    # TPU keeps arrays in (8, 128)-style tiles: the planned shards, padded to the compiled
    # layouts, are exactly the per-chip argument bytes; unpadded they are a lower bound
    tiled = compiled_lib.tiled_bytes_per_device((setup.abstract_state, batch), specs, setup.mesh,
                                        compiled.input_formats)
    assert mem.argument_size_in_bytes == tiled
    logical = sharding.bytes_per_device((setup.abstract_state, batch), specs, setup.mesh)
    assert logical < tiled
    cost = compiled_lib.cost_of(compiled)
    assert cost["flops"] > 0 and cost["optimal_seconds"] > 0


@pytest.mark.slow
@needs_libtpu
def test_a_bigger_batch_needs_more_temp_memory():
    # The tiny model's temp bytes on TPU are not proportional to the batch: measured 13.1 MB
    # at 512 and 1024, 61.8 MB at 2048 (XLA's fixed scratch dominates until the n x N logits
    # and activations outgrow it), so this asserts growth over a 4x batch, not a ratio.
    temp = {}
    for batch in (512, 2048):
        r = plan.compiled_plan(_tiny(batch), "v5e:2x2")
        assert r["fits"] and r["xla_tflops_per_chip"] > 0 and r["step_seconds_bound"] > 0
        # libtpu's optimal_seconds (seen: -12.0 at batch 2048) is reported only when positive
        assert r.get("compiler_optimal_seconds", 1.0) > 0
        temp[batch] = r["memory_bytes"]["temp"]
    assert temp[2048] >= 2 * temp[512], temp


@needs_libtpu
def test_cli_reports_an_oversized_recipe_as_not_fitting():
    out = _cli("--config", "configs/vit_l14_laion400m.py:v5e-256", "--topology", "v5e:2x2",
               "--config.batch_size=163840", "--config.loss_impl=dense",
               "--config.model.remat=none", "--config.accum_steps=1",
               "--config.mesh.data=1", "--config.mesh.fsdp=4")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "fits" in out.stdout and "NO (over 90%" in out.stdout
    assert "RESOURCE_EXHAUSTED" in out.stdout
    assert "TPU_ACCELERATOR_TYPE" not in out.stderr  # libtpu's host warnings are silenced


@needs_libtpu
def test_cli_json_for_the_tiny_config():
    import json

    out = _cli("--config", "configs/tiny.py", "--topology", "v5e:2x2", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["method"] == "compiled" and r["chips"] == 4 and r["fits"]
    assert r["per_chip_batch"] == 8 and r["mfu_bound"] > 0 and r["samples_per_sec_per_chip"] > 0
    assert r["step_seconds_bound"] == max(r["compute_seconds"], r["memory_seconds"])
    assert r["bound_by"] in ("compute", "memory")
    assert out.stderr.strip() == ""


@needs_libtpu
def test_a_scanned_plan_counts_the_whole_step_like_an_unrolled_one():
    """XLA's cost_analysis counts a scanned stack's body once: the plan of a scanned model
    (memory from its own compile, cost from shallow unrolled compiles extrapolated in depth)
    agrees with the plan of the same model unrolled within 10% on FLOPs, bytes accessed and the
    step-time bound (the raw count of the scanned program would be about half: its loop
    bodies counted once)."""
    c = _small("full", 1, "siglip", "blockwise", batch=64)
    c.model.vision.layers, c.model.text.layers = 3, 2
    c.mesh.data, c.mesh.fsdp = 1, 4
    unrolled = plan.compiled_plan(c, "v5e:2x2")
    assert unrolled["cost_method"].startswith("the compiled step")
    c.model.scan = True
    scanned = plan.compiled_plan(c, "v5e:2x2")
    assert scanned["cost_method"].startswith("unrolled compiles at depth 1 and 2")
    for key in ("xla_tflops_per_chip", "bytes_accessed_gib", "step_seconds_bound"):
        assert scanned[key] == pytest.approx(unrolled[key], rel=0.10), key


@pytest.mark.slow  # four compiles, about 50 s on a loaded host: `-m slow` runs it
@needs_libtpu
def test_a_scanned_decoder_is_counted_every_layer():
    """A captioning decoder's layers scan with model.scan too: the plan extrapolates them in
    depth like the towers', so a scanned model with a 3-layer decoder counts the FLOPs of the
    same model unrolled (within 5%)."""
    c = _small("full", 1, "siglip", "blockwise", batch=32)
    c.model.vision.layers = c.model.text.layers = 1
    c.model.decoder.update(layers=3, width=32, heads=2, mlp_dim=64)
    c.mesh.data, c.mesh.fsdp = 1, 4
    unrolled = plan.compiled_plan(c, "v5e:2x2")
    c.model.scan = True
    scanned = plan.compiled_plan(c, "v5e:2x2")
    assert "decoder 3 blocks" in scanned["cost_method"]
    assert scanned["xla_tflops_per_chip"] == pytest.approx(unrolled["xla_tflops_per_chip"],
                                                           rel=0.05)


def test_the_gradient_cache_loops_are_counted_every_trip():
    """The gradient cache's micro-batch loops are scans too: the cost of a scanned model with
    3 micro-batches counts every block and every trip, as a compile with the blocks and those
    loops fully unrolled counts it (odd k: the loops are unrolled by a divisor of k, so no
    remainder trip). On this CPU's devices (2 of them), within 2%."""
    import dataclasses

    devices = jax.devices()[:2]
    c = _small("full", 3, "clip", "dense", batch=12)
    for tower in (c.model.vision, c.model.text):
        tower.width, tower.mlp_dim, tower.heads = 32, 64, 2
    c.model.text.layers = 1
    c.mesh.data, c.mesh.fsdp = 1, 2
    setup = dataclasses.replace(train.build(c, devices=devices), accum_unroll=True)
    ref = compiled_lib.cost_of(compiled_lib.compile_step(setup)[0])
    c.model.scan = True
    got = compiled_lib.step_cost(c, devices)
    assert got["cost_method"].endswith("micro-batch loops compiled at 1 and 3 trips per loop "
                                       "body, extrapolated to 3")
    for key in ("flops", "bytes accessed"):
        assert got[key] == pytest.approx(ref[key], rel=0.02), key


@needs_libtpu
def test_remat_auto_compiles_the_candidates_and_chooses_the_fastest_that_fits(capsys):
    c = _small("auto", 1, "clip", "dense", batch=64)
    c.mesh.data, c.mesh.fsdp = 1, 4
    r = plan.plan(c, "v5e:2x2", remat="none,full")
    table = {row["policy"]: row for row in r["remat_table"]}
    assert set(table) == {"none", "full"} and r["remat"] == r["remat_choice"]
    assert r["scan"] == r["scan_choice"] == bool(c.model.scan)
    best = max(table.values(), key=lambda row: row["samples_per_sec_per_chip"])
    assert r["remat_choice"] == best["policy"] and r["fits"]
    # full remat runs the blocks' forward again in the backward (at this size XLA's fixed
    # scratch, not activations, sets the HBM, so memory is not compared here)
    assert table["full"]["xla_tflops_per_chip"] > table["none"]["xla_tflops_per_chip"]
    assert "(chosen)" in plan.format_table(r)
    # a scanned config weighs each policy unrolled too under auto; @ picks one explicitly
    assert plan.remat_candidates("none@unrolled,full@scan,minimal", scan=True) == [
        ("none", False), ("full", True), ("minimal", True)]
    auto = plan.remat_candidates("auto", scan=True)
    assert ("none", False) in auto and ("none", True) in auto
    assert all(s is False for _, s in plan.remat_candidates("auto", scan=False))
    for bad in ("none,fastest", "none@rolled", "none@", ","):
        with pytest.raises(tpu.PlanError, match="remat candidates"):
            plan.remat_candidates(bad)


def _tiny_naflex():
    c = _recipe("tiny.py")
    c.model.name, c.loss = "tiny-naflex", "siglip"
    c.data.source, c.data.train = "webdataset", "/nonexistent/{00000..00001}.tar"
    c.data.naflex.buckets, c.data.naflex.tokens = (4, 16), 256
    c.mesh.data, c.mesh.fsdp = 2, 2
    return c


@needs_libtpu
def test_a_naflex_recipe_compiles_every_bucket_and_reports_the_worst():
    """Each bucket is its own program: (tokens // bucket images, rounded to the 4 chips, of
    ``bucket`` patches). The worst bucket is the maximum of the buckets' HBM; its figures are
    those of the step compiled alone for its shape, whose arguments are the bucket's planned
    shards (tiled, as in the square test above)."""
    c = _tiny_naflex()
    r = plan.plan(c, "v5e:2x2", "uint8")  # the pipeline's raw patches
    assert [(b["patches"], b["images"]) for b in r["buckets"]] == [(4, 64), (16, 16)]
    assert r["programs"] == 2 and r["fits"] and r["chips"] == 4
    worst = max(r["buckets"], key=lambda b: b["hbm_gib_per_chip"])
    assert r["worst_bucket"] == worst["patches"] and r["hbm_gib_per_chip"] == worst[
        "hbm_gib_per_chip"]
    setup = train.build(c, devices=tpu.ordered(tpu.topology_devices("v5e:2x2"), c))
    specs = jax.tree.map(lambda s: s.spec, setup.batch_sharding)
    shape = (worst["images"], worst["patches"])
    program, _ = compiled_lib.compile_step(setup, "uint8", shape)
    mem = compiled_lib.memory_of(program)
    assert mem == worst["memory_bytes"]
    _, batch = compiled_lib.abstract_inputs(setup, "uint8", shape)
    assert batch["image"]["patches"].shape == (*shape, 8 * 8 * 3)
    tiled = compiled_lib.tiled_bytes_per_device(
        (setup.abstract_state, batch),
        (compiled_lib.specs_of(setup.state_shardings), jax.tree.map(lambda _: specs, batch)),
        setup.mesh, program.input_formats)
    assert mem["argument"] == tiled
    table = plan.format_buckets(r)
    assert "(worst)" in table and "2 programs" in table
    with pytest.raises(tpu.PlanError, match="NaFlex"):
        plan.plan(c, "v5e:2x2", remat="none,full")
    c.data.naflex.tokens = 30  # 30 // 16 = 1 image: not one per chip
    with pytest.raises(tpu.PlanError, match="does not hold 4"):
        plan.plan(c, "v5e:2x2")
