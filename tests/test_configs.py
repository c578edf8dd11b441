"""Every config in configs/ loads and plans on its target platform (abstractly: no devices)."""

import importlib.util
import os

import pytest

from clip_jax import plan, recipes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
RECIPES = [f for f in sorted(os.listdir(CONFIG_DIR)) if f.endswith(".py")]


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", RECIPES)
def test_config_plans_on_its_platforms(name):
    mod = _load(name)
    platforms = list(getattr(mod, "MESH", {})) or [None]
    for platform in platforms:
        c = mod.get_config(platform) if platform else mod.get_config()
        devices, hosts, hbm_gib = recipes.PLATFORMS.get(platform, (8, 1, 16))
        p = plan.abstract_plan(c, devices, hosts)
        state_gib = p["param_gib_per_device"] + p["opt_gib_per_device"]
        assert state_gib < 0.25 * hbm_gib, (name, platform, p)
        assert p["micro_batch_per_data_shard"] >= 1
        if platform:
            assert c.data.source == "webdataset" and c.batch_size >= 32768
            assert c.total_steps * c.batch_size >= 6_000_000_000
            assert c.data.train == mod.SHARDS and c.data.tokenizer == mod.TOKENIZER


def test_a_broken_recipe_fails_with_a_clear_error():
    c = _load("vit_l14_laion400m.py").get_config("v5e-256")
    c.accum_steps = 3
    with pytest.raises(ValueError, match="must be divisible"):
        plan.abstract_plan(c, 256, 64)
    with pytest.raises(ValueError, match="unknown platform"):
        recipes.laion_recipe("ViT-B-32", 32768, "v9-1", (1, 1, 1), 1, train="x.tar",
                                tokenizer="train")
