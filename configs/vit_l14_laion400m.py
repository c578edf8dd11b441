"""ViT-L/14 on a LAION-400M-like shard set, global batch 32,768 (gradient cache).

Arithmetic: 32,768 samples/step; 12,207 steps/epoch; 32 epochs = 390,625 steps = 12.8B
samples; 257 image tokens per sample (256 patches + class). 428M parameters: fp32 params +
AdamW state are 4.8 GiB replicated, so the parameters are fully sharded (FSDP).

  v4-64   : 1,024/device, mesh data=1 fsdp=32, accum 4 (micro-batch 256/device)
  v5e-256 :   128/device, mesh data=4 fsdp=64, no accumulation (compiled for v5e:16x16:
            6.1 GiB of 16 per chip; accum 2 needed 3.5 GiB but one more forward pass)
  gpu-8x8 :   512/device, mesh data=8 fsdp=8, accum 4 (micro-batch 128/device)
"""

from clip_jax.recipes import laion_recipe

MESH = {"v4-64": ((1, 32, 1), 4), "v5e-256": ((4, 64, 1), 1), "gpu-8x8": ((8, 8, 1), 4)}
# The TPU topology of each platform (python -m clip_jax.plan compiles the step for it).
TOPOLOGY = {"v4-64": "v4:4x4x2", "v5e-256": "v5e:16x16"}
# Where the data lives: edit for your cluster (or override with --config.data.train=...).
SHARDS = "/data/laion400m/{00000..41407}.tar"
TOKENIZER = "clip_bpe:/data/bpe_simple_vocab_16e6.txt.gz"


def get_config(platform="v4-64"):
    mesh, accum = MESH[platform]
    c = laion_recipe("ViT-L-14", 32768, platform, mesh, accum,
                     train=SHARDS, tokenizer=TOKENIZER)
    c.optimizer.lr = 4e-4
    return c
