"""SigLIP 2 B/16 NaFlex at the paper's scale: each image at its own aspect ratio, a sequence-length
bucket per step (Tschannen et al. 2025, arXiv 2502.14786; big_vision README_siglip2).

    python -m clip_jax.train --config configs/siglip2_naflex_b16.py:v5e-256 --workdir gs://...
    python -m clip_jax.plan --config configs/siglip2_naflex_b16.py:v5e-256   # every bucket

The model is preset ``ViT-B-16-SigLIP2-NaFlex`` (HF google/siglip2-base-patch16-naflex: the
SigLIP B/16 towers, a 16 x 16 position table resized to each image's grid, MAP head, Gemma's
256k vocabulary, text length 64; SigLIP 2's text recipe comes with its tokenizer: lower case,
``<eos>`` appended, padded to 64). Sigmoid loss computed blockwise, logit scale ln 10, bias -10;
lr 1e-3, weight decay 1e-4, cosine schedule with 20k warmup steps (the paper's).

Batches (``data.naflex``, clip_jax/data/naflex.py): each step draws one of the paper's buckets
128, 256, 576, 784, 1024 (patches per image) from a hash of the seed and the step, and holds
``tokens // bucket`` images rounded down to a multiple of the 256 chips. ``tokens`` is 32,768 x
256: the paper's batch of 32k at its base sequence length 256; per step 65,536 / 32,768 /
14,336 / 10,496 / 8,192 images (mean 26,266 over the uniform draw), always about 32k patches
per chip. The paper instead keeps 32k images at every length (4M to 34M patches per step); a
token budget keeps each step's memory and time level across buckets. 40B examples at 32k per
step: 1.22M steps. Five buckets, five compiled programs.

  v5e-256 : mesh data=16 fsdp=16, no accumulation (NaFlex batches run without the gradient
            cache); remat full, scan. ``python -m clip_jax.plan`` compiles every bucket for
            v5e:16x16 and reports each one's HBM per chip: all fit, the worst bucket 128 at
            5.21 GiB of 16 per chip (1024: 4.19; docs/benchmarks.md).
"""

import math

from clip_jax.data.naflex import BUCKETS
from clip_jax.recipes import laion_recipe

MESH = {"v5e-256": ((16, 16, 1), 1)}
# The TPU topology of each platform (python -m clip_jax.plan compiles the step for it).
TOPOLOGY = {"v5e-256": "v5e:16x16"}
# Where the data lives: edit for your cluster (or override with --config.data.train=...).
SHARDS = "/data/webli/{00000..99999}.tar"
TOKENIZER = "json:/data/siglip2/tokenizer.json"  # SigLIP 2's Gemma tokenizer (256k)
BATCH = 32768  # images per step at the base sequence length
BASE_LENGTH = 256  # patches: 256 x 256 px in 16 px patches
EXAMPLES = 40_000_000_000  # the paper's examples seen


def get_config(platform="v5e-256"):
    if platform not in MESH:
        raise ValueError(f"configs/siglip2_naflex_b16.py:{platform}: platforms are "
                         f"{', '.join(MESH)}")
    mesh, accum = MESH[platform]
    c = laion_recipe("ViT-B-16-SigLIP2-NaFlex", BATCH, platform, mesh, accum,
                     train=SHARDS, tokenizer=TOKENIZER)
    c.total_steps = EXAMPLES // BATCH
    c.loss = "siglip"
    c.loss_impl = "blockwise"
    c.model.init_logit_scale = math.log(10.0)
    c.model.init_logit_bias = -10.0
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 20_000
    c.data.naflex.buckets = BUCKETS
    c.data.naflex.tokens = BATCH * BASE_LENGTH
    return c
