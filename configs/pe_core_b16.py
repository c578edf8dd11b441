"""Perception Encoder PE-Core-B/16 (preset ``PE-Core-B-16``, as open_clip builds
``PE-Core-B-16.json``) on a LAION-400M-like shard set, global batch 32,768.

The PE architecture (clip_jax/models/pe.py): timm's Eva ViT-B/16 with 2D RoPE beside the
absolute position embedding, pre-LN (norm_pre), an 8-head MAP pool and a biased head to the
1,024-d embedding; open_clip's causal text transformer (width 1,024, 24 blocks, context 32)
and the CLIP BPE tokenizer, as open_clip's PE-Core. From scratch, with the pipeline's CLIP
normalisation (Meta's released weights expect mean = std = 0.5: an imported bundle's
preprocess records it).
Arithmetic: 32,768 samples/step; 12,207 steps/epoch; 32 epochs = 390,625 steps = 12.8B
samples; 197 image tokens per sample (196 patches + class).

  v4-64   : 1,024/device, mesh data=1 fsdp=32, accum 2 (micro-batch 512/device)
  v5e-256 :   128/device, mesh data=16 fsdp=16 (16 GiB HBM: bf16 + remat)
  gpu-8x8 :   512/device, mesh data=8 fsdp=8, accum 2 (micro-batch 256/device)
"""

from clip_jax.recipes import laion_recipe

MESH = {"v4-64": ((1, 32, 1), 2), "v5e-256": ((16, 16, 1), 1), "gpu-8x8": ((8, 8, 1), 2)}
# The TPU topology of each platform (python -m clip_jax.plan compiles the step for it).
TOPOLOGY = {"v4-64": "v4:4x4x2", "v5e-256": "v5e:16x16"}
# Where the data lives: edit for your cluster (or override with --config.data.train=...).
SHARDS = "/data/laion400m/{00000..41407}.tar"
TOKENIZER = "clip_bpe:/data/bpe_simple_vocab_16e6.txt.gz"


def get_config(platform="v4-64"):
    mesh, accum = MESH[platform]
    return laion_recipe("PE-Core-B-16", 32768, platform, mesh, accum,
                        train=SHARDS, tokenizer=TOKENIZER)
