"""A tower family is one file: a toy image family registered from this test (its module, switch
checks, FLOPs, layer ids, presets and key maps, nothing else touched) initialises, trains, counts
its FLOPs, scales its updates by layer decay, round-trips through a format and shows in every
listing; unregistered, it is gone again."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clip_jax
from clip_jax import config as config_lib
from clip_jax import flops, input_pipeline, models, optimizer, params, train
from clip_jax.data.synthetic import SyntheticSource
from clip_jax.interop import keymap, keymap_clip
from clip_jax.interop import layouts as L
from clip_jax.layers import logical_init
from clip_jax.models import family as families


class MeanPoolTower(nn.Module):
    """Each pixel embedded (``embed``: 3 -> width), averaged over the image, projected
    (``head``: width -> embed_dim)."""

    cfg: models.ModelConfig

    @nn.compact
    def __call__(self, images, train: bool = False):
        c, v = self.cfg, self.cfg.vision

        def dense(features, name):
            return nn.Dense(features, name=name,
                            kernel_init=logical_init(nn.initializers.lecun_normal(),
                                                     ("embed", "mlp")),
                            bias_init=logical_init(nn.initializers.zeros, ("mlp",)))

        x = jax.nn.gelu(dense(v.width, "embed")(images.astype(jnp.float32)))
        return dense(c.embed_dim, "head")(x.mean((1, 2)))


def _check(v):
    if v.patch_dropout or v.stages is not None:
        raise ValueError("model.vision.family='toy' has no patches and no stages")
    if isinstance(v.width, bool) or not isinstance(v.width, int) or v.width < 1:
        raise ValueError(f"model.vision.width={v.width!r}: must be a positive integer")


def _flops(cfg, train, remat):  # per sample: the per-pixel embedding and the head
    v = cfg.vision
    return float(2 * v.image_size**2 * 3 * v.width + 2 * v.width * cfg.embed_dim), 0.0


def _layer_id(cfg, path, shape):  # depth 0: the embedding is layer 0, the head layer 1
    return {"embed": 0, "head": 1}.get(path.split("/", 1)[0])


def _open_clip_rules(cfg):
    tb = L.Table()
    tb.dense("visual/embed", "visual.embed")
    tb.dense("visual/head", "visual.head")
    keymap_clip.open_clip_text(tb, cfg)
    return tb.rules


TOY_KEYMAP = types.SimpleNamespace(  # its open_clip names (a format module's interface)
    NAME="toy", IGNORED={"open_clip": frozenset(), "hf": frozenset()},
    OUTSIDE={"open_clip": frozenset(), "hf": frozenset()},
    unsupported=lambda cfg, fmt: [] if fmt == "open_clip" else ["transformers has no toy"],
    open_clip_rules=_open_clip_rules, normalize=lambda sd, fmt: sd)


@pytest.fixture
def toy():
    """The toy family and its preset ``tiny-toy`` (the "tiny" text tower), registered for one
    test and taken out after it."""
    before = (dict(families.VISION), dict(families.PRESETS))
    fam = families.register(families.Family(
        "toy", MeanPoolTower, _check, flops=_flops, depth=lambda cfg: 0, layer_id=_layer_id,
        keymap=TOY_KEYMAP))
    try:
        cfg = models.ModelConfig(embed_dim=32, vision=models.VisionConfig(
            image_size=16, width=24, family="toy"), text=models.get_model_config("tiny").text)
        families.add_presets("toy", {"tiny-toy": cfg})
        yield fam, cfg
    finally:
        families.unregister("toy")
    assert (dict(families.VISION), dict(families.PRESETS)) == before


def test_a_registered_family_is_listed_checked_and_unregistered(toy):
    _, cfg = toy
    assert "toy" in families.VISION and models.get_model_config("tiny-toy") == cfg
    assert "tiny-toy" in clip_jax.list_models()
    with pytest.raises(ValueError, match="must be one of vit, resnet, convnext, naflex, pe, toy"):
        models.VisionConfig(family="toy2")
    with pytest.raises(ValueError, match="family='toy' has no patches"):
        cfg.replace(vision={"patch_dropout": 0.5})
    with pytest.raises(ValueError, match="already registered"):
        families.register(families.Family("toy", MeanPoolTower, _check))
    # a saved config reads back the same (no field was added for the family)
    assert models.ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert "family" not in cfg.to_dict()["text"]


def test_a_registered_family_initialises_trains_and_counts_its_flops(toy):
    _, cfg = toy
    c = config_lib.base_config()
    c.model.name, c.batch_size, c.total_steps = "tiny-toy", 8, 4
    c.mesh.data, c.data.source, c.optimizer.layer_decay = 1, "synthetic", 0.5
    c.optimizer.warmup_steps = 1
    config_lib.validate(c)
    setup = train.build(c, jax.devices()[:1])
    state = train.init_state(setup)
    assert set(state.params["visual"]) == {"embed", "head"}
    step = train.make_train_step(setup)
    data = SyntheticSource(8, 16, cfg.text.context_length, cfg.text.vocab_size, 8, 0.5, 0)
    first = jax.tree.map(np.array, state.params)  # the step donates its input
    for _ in range(3):
        state, metrics = step(state, input_pipeline.to_global(setup.batch_sharding, next(data)))
        assert np.isfinite(float(metrics["loss"]))
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params, first)
    assert moved["visual"]["embed"]["kernel"] > 0 and moved["visual"]["head"]["kernel"] > 0

    # FLOPs: the family's own count, in the step's total
    per = flops.tower_flops(cfg)
    assert per["vision"] == 2 * 16 * 16 * 3 * 24 + 2 * 24 * 32 and per["vision_remat"] == 0
    step_flops = flops.train_step_flops(cfg, 8)
    assert step_flops.forward == 8 * (per["vision"] + per["text"])

    # layer decay from the family's ids: embedding d ** (0 + 1 - 0), head 1
    f = params.flatten_params(optimizer.layer_decay_factors(state.params, 0.5, cfg))
    assert f["visual/embed/kernel"] == 0.5 and f["visual/head/kernel"] == 1.0
    assert f["text/token_embedding"] == 0.5 ** (cfg.text.layers + 1)


def test_a_registered_familys_key_maps_round_trip(toy):
    _, cfg = toy
    tree = jax.tree.map(np.asarray, nn.unbox(models.CLIP(cfg).init(
        jax.random.key(0), *models.init_inputs(cfg))["params"]))
    assert keymap.family(cfg) == "toy"
    sd = keymap.to_external(tree, cfg, "open_clip")
    assert sd["visual.head.weight"].shape == (32, 24) and "ln_final.weight" in sd
    back = params.flatten_params(keymap.from_external(sd, cfg, "open_clip"))
    for k, a in params.flatten_params(tree).items():
        np.testing.assert_array_equal(back[k], a, err_msg=k)
    with pytest.raises(ValueError, match="cannot hold this toy model: transformers has no toy"):
        keymap.to_external(tree, cfg, "hf")
    with pytest.raises(ValueError, match="family='toy': open_clip cannot build"):
        models.to_open_clip_config(cfg)


def test_a_family_without_key_maps_or_layer_ids_is_refused_in_one_line(toy):
    _, cfg = toy
    families.unregister("toy")
    families.register(families.Family("toy", MeanPoolTower, _check, flops=_flops))
    tree = models.abstract_params(cfg)
    with pytest.raises(ValueError, match="family='toy' has no key maps"):
        keymap.to_external(tree, cfg, "open_clip")
    with pytest.raises(ValueError, match="toy vision tower defines no layer ids"):
        optimizer.layer_decay_factors(tree, 0.5, cfg)
    families.add_presets("toy", {"tiny-toy": cfg})  # as the fixture left it
