"""CLIP's ResNet-50 (OpenAI's ModifiedResNet, open_clip's ``RN50``) on a LAION-400M-like shard set,
global batch 32,768: the paper's recipe for its convolutional family.

    python -m clip_jax.train --config configs/rn50_laion400m.py:v4-64 --workdir gs://B/runs/rn50
    python -m clip_jax.plan --config configs/rn50_laion400m.py:v4-64     # compile it for v4:4x4x2

Arithmetic: 32,768 samples/step; 400M / 32,768 = 12,207 steps/epoch; 32 epochs = 390,625 steps
= 12.8B samples seen, each a 224 px image (11.6 GFLOP forward through the image tower,
``clip_jax.flops``) and <= 77 text tokens. BatchNorm normalises over the global batch of each
step (the sharded batch under ``jax.jit``: XLA all-reduces the moments), its running statistics
in the train state's ``batch_stats``; each Bottleneck is rematerialised (``model.remat``).

Platform argument (after the colon), per-device batch, mesh and accumulation:
  v4-64   : 32 chips   -> 1,024/device, mesh data=1 fsdp=32, accumulation 8 (compiled: 8.13
            GiB, 25% of HBM; at 1 / 2 / 4 the temporaries are 52.6 / 39.9 / 32.6 GiB of 32)
  v5e-256 : 256 chips  ->   128/device, mesh data=16 fsdp=16 (compiled: 7.92 GiB, 49% of HBM)
  gpu-8x8 : 64 H100s   ->   512/device, mesh data=8 (across nodes) fsdp=8 (NVLink)
"""

from clip_jax.recipes import laion_recipe

MESH = {"v4-64": ((1, 32, 1), 8), "v5e-256": ((16, 16, 1), 1), "gpu-8x8": ((8, 8, 1), 1)}
# The TPU topology of each platform (python -m clip_jax.plan compiles the step for it).
TOPOLOGY = {"v4-64": "v4:4x4x2", "v5e-256": "v5e:16x16"}
# Where the data lives: edit for your cluster (or override with --config.data.train=...).
SHARDS = "/data/laion400m/{00000..41407}.tar"
TOKENIZER = "clip_bpe:/data/bpe_simple_vocab_16e6.txt.gz"


def get_config(platform="v4-64"):
    mesh, accum = MESH[platform]
    return laion_recipe("RN50", 32768, platform, mesh, accum, train=SHARDS, tokenizer=TOKENIZER)
