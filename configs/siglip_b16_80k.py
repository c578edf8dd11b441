"""SigLIP ViT-B/16, global batch 81,920, sigmoid loss computed blockwise (never n x N in memory).

The SigLIP architecture (preset ``ViT-B-16-SigLIP``, as big_vision and open_clip build it):
patch embedding with bias, no class token and no pre-LN, MAP head giving the 768-d embedding with
no image projection, bidirectional text pooled at the last position with a biased projection,
tanh GELU, LayerNorm eps 1e-6; SigLIP's 32k SentencePiece vocabulary at context length 64 (the
bundle records big_vision's text recipe: lower-casing and canonicalisation).
SigLIP settings: logit scale init ln 10 (t = 10), bias -10, no global softmax normalisation.
Arithmetic: 81,920 samples/step; 400M / 81,920 = 4,882 steps/epoch; 16 epochs = 78,125 steps
= 6.4B samples seen; 196 image tokens per sample.

  v4-64   : 2,560/device, mesh data=1 fsdp=32, accum 8 (micro-batch 320/device)
  v5e-256 :   320/device, mesh data=16 fsdp=16, no accumulation (compiled for v5e:16x16:
            5.3 GiB of 16 per chip; accum 4 needed 2.0 GiB but one more forward pass)
  gpu-8x8 : 1,280/device, mesh data=8 fsdp=8, accum 4 (micro-batch 320/device)
"""

import math

from clip_jax.recipes import laion_recipe

MESH = {"v4-64": ((1, 32, 1), 8), "v5e-256": ((16, 16, 1), 1), "gpu-8x8": ((8, 8, 1), 4)}
# The TPU topology of each platform (python -m clip_jax.plan compiles the step for it).
TOPOLOGY = {"v4-64": "v4:4x4x2", "v5e-256": "v5e:16x16"}
# Where the data lives: edit for your cluster (or override with --config.data.train=...).
SHARDS = "/data/laion400m/{00000..41407}.tar"
TOKENIZER = "sentencepiece:/data/siglip/spiece.model"  # SigLIP's 32k vocabulary


def get_config(platform="v4-64"):
    mesh, accum = MESH[platform]
    c = laion_recipe("ViT-B-16-SigLIP", 81920, platform, mesh, accum, epochs=16,
                     train=SHARDS, tokenizer=TOKENIZER)
    c.loss = "siglip"
    c.loss_impl = "blockwise"
    c.model.init_logit_scale = math.log(10.0)  # the preset's own values, stated
    c.model.init_logit_bias = -10.0
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 1e-4
    # remat: the plan's choice on v5e:2x2 at batch 1024 (256/chip; python -m clip_jax.plan
    # --remat none,save_dot_except_mlp,full) was save_dot_except_mlp, 13.4 of 16 GiB and 474
    # samples/s/chip by the bound against full's 448 (docs/benchmarks.md, "The TPU step");
    # not yet planned at this recipe's own topologies, so full stays (it fits them all)
    return c
