"""A small SigLIP trained on the offline demo corpus on a CPU (the SigLIP twin of configs/demo.py).

    python -m clip_jax.train --config configs/siglip_demo.py --workdir workdirs/siglip_demo

The sizes of ``small-demo`` (64px images in 16px patches, image width 192, text width 128, 4
layers each) with SigLIP's architecture: no class token, no pre-LN, patch-embedding bias, MAP
head, no image projection (embed_dim = image width 192), bidirectional text pooled at the last
position with a biased projection, tanh GELU, LayerNorm eps 1e-6; the sigmoid loss with logit
scale ln 10 and bias -10. Data, tokenizer, schedule and evaluation as configs/demo.py (zero-shot
on the 12 held-out colour x shape pairs is logged as ``eval/zeroshot/acc1``).
"""

import importlib.util
import math
import os

_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")


def _demo_config():
    spec = importlib.util.spec_from_file_location("clip_jax_demo_config", _DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _demo_config()
    c.loss = "siglip"
    c.model.embed_dim = 192
    c.model.act = "gelu_tanh"
    c.model.ln_eps = 1e-6
    c.model.init_logit_scale = math.log(10.0)
    c.model.init_logit_bias = -10.0
    c.model.vision.class_token = False
    c.model.vision.ln_pre = False
    c.model.vision.patch_bias = True
    c.model.vision.pool = "map"
    c.model.vision.proj = False
    c.model.text.causal = False
    c.model.text.pool = "last"
    c.model.text.proj_bias = True
    return c
