"""ViT-B/16 on a LAION-400M-like shard set, global batch 32,768.

Arithmetic: 32,768 samples/step; 12,207 steps/epoch; 32 epochs = 390,625 steps = 12.8B
samples; 197 image tokens per sample (196 patches + class): ~2.5T image tokens in all.

  v4-64   : 1,024/device, mesh data=1 fsdp=32, no accumulation (compiled for v4:4x4x2:
            23.1 GiB of 32 per chip; accum 2 needed 12.2 GiB but one more forward pass)
  v5e-256 :   128/device, mesh data=16 fsdp=16 (16 GiB HBM: bf16 + remat)
  gpu-8x8 :   512/device, mesh data=8 fsdp=8, accum 2 (micro-batch 256/device)
"""

from clip_jax.recipes import laion_recipe

MESH = {"v4-64": ((1, 32, 1), 1), "v5e-256": ((16, 16, 1), 1), "gpu-8x8": ((8, 8, 1), 2)}
# The TPU topology of each platform (python -m clip_jax.plan compiles the step for it).
TOPOLOGY = {"v4-64": "v4:4x4x2", "v5e-256": "v5e:16x16"}
# Where the data lives: edit for your cluster (or override with --config.data.train=...).
SHARDS = "/data/laion400m/{00000..41407}.tar"
TOKENIZER = "clip_bpe:/data/bpe_simple_vocab_16e6.txt.gz"


def get_config(platform="v4-64"):
    mesh, accum = MESH[platform]
    return laion_recipe("ViT-B-16", 32768, platform, mesh, accum,
                        train=SHARDS, tokenizer=TOKENIZER)
