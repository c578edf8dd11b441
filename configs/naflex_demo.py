"""NaFlex's demo: the same small CLIP trained at each image's aspect ratio and on square crops.

    python -m clip_jax.train --config configs/naflex_demo.py:naflex --workdir workdirs/naflex_demo
    python -m clip_jax.train --config configs/naflex_demo.py:fixed --workdir workdirs/fixed_demo
    python benchmarks/naflex_demo.py workdirs/naflex_demo workdirs/fixed_demo

The corpus is the demo's ``strip`` variant (``clip_jax.data.demo_strip``, generated into
``data/demo_strip`` if missing): 4:1 and 1:4 strips with the coloured, patterned shape in the
tile at one end and the rest blank, so a square centre crop (and the fixed pipeline's training
crop) holds none of it. The held-out zero-shot task is the plain demo's (12 colour x shape
pairs never seen in training, chance 1/12).

Both models are the same small CLIP (``small-demo``'s sizes: 64 px in 16 px patches, a 4 x 4
position table, width 192/128, 4 layers each, CLIP's softmax loss) with the SigLIP-shaped image
tower NaFlex needs (no class token, no pre-LN, patch bias, MAP head, no image projection), the
same 16 image tokens per image and 128 images per step: ``naflex`` is the NaFlex tower fed each
strip whole (``data.naflex``: one bucket of 16 patches, a 2 x 8 or 8 x 2 grid, 2,048 tokens per
step), ``fixed`` the ViT fed square crops as the fixed-resolution pipeline makes them. (The
sigmoid loss of ``configs/siglip_demo.py`` stayed on its plateau, loss ~5.1 and embeddings
collapsed, through a 400-step run of ``naflex``: too few steps for it on this corpus.) The
in-training evaluation feeds square centre crops to both (the fixed pipeline's figure for
``fixed``); ``benchmarks/naflex_demo.py`` evaluates each model with its own preprocessing (the
NaFlex model at each strip's aspect ratio).
"""

import importlib.util
import os

_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")
TOKENS_PER_IMAGE = 16  # (64 / 16) ** 2, the fixed model's


def _demo_config():
    spec = importlib.util.spec_from_file_location("clip_jax_demo_config", _DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(model="naflex"):
    if model not in ("naflex", "fixed"):
        raise ValueError(f"configs/naflex_demo.py:{model}: the model is 'naflex' or 'fixed'")
    c = _demo_config()
    c.model.embed_dim = 192  # the image tower's width: no image projection
    c.model.vision.update(class_token=False, ln_pre=False, patch_bias=True, pool="map",
                          proj=False)
    c.data.demo = "data/demo_strip"
    c.data.demo_variant = "strip"
    c.data.demo_train_samples = 20000
    c.total_steps = 400
    c.optimizer.warmup_steps = 50
    c.checkpoint.every_steps = 0
    c.eval.every_steps = 0  # once, at the end
    if model == "naflex":
        c.model.vision.family = "naflex"
        c.data.naflex.buckets = (TOKENS_PER_IMAGE,)
        c.data.naflex.tokens = TOKENS_PER_IMAGE * c.batch_size
    return c
