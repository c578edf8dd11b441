"""The whole SigLIP 2 recipe at B/16, fixed resolution: the sigmoid loss, LocCa's decoder tasks
and, in the last 20% of training, SILC's self-distillation and TIPS's masked prediction from
the EMA teacher (Tschannen et al. 2025, arXiv 2502.14786; docs/self_distillation.md).

    python -m clip_jax.train --config configs/siglip2_b16.py:v5e-256 --workdir gs://...
    python -m clip_jax.plan --config configs/siglip2_b16.py:v5e-256 --terms   # per-term shares

Model: preset ``ViT-B-16-SigLIP2-256`` (the SigLIP B/16 towers at 256 px, 256 patches, MAP
head, Gemma's 256k vocabulary, text length 64). Sigmoid loss computed blockwise, logit scale
ln 10, bias -10; batch 32,768, 40B examples seen (1,220,703 steps), lr 1e-3, weight decay
1e-4, cosine schedule with 20k warmup steps (the paper's; as configs/siglip2_naflex_b16.py).

Terms (each one objective, clip_jax/objectives/):

* LocCa decoder (``locca.py``): a transformer decoder cross-attending to the un-pooled image
  tokens, the text tower's shape with half its layers (6 x 768, 12 heads, MLP 3072), trained
  on captioning, referring expression -> box and box -> region caption, one task per example,
  uniform; CapPa's parallel prediction on 50% of the captioning rows; loss weight 1. Boxes are
  quantised to ``loc_bins`` = 256 coordinate tokens (1 px at 256 px: *chosen*, the paper's bin
  count is not confirmed here); up to 4 boxes per example from the shards' ``KEY.json``.
* SILC (``silc.py``): 1 global view (0.4-1 of the area) to the EMA teacher, 8 local views
  (0.05-0.4, 112 px) to the student, DINO-style head of 65,536 prototypes; weight 1 x 0.25
  (B size) from 80% of training.
* TIPS (``tips.py``): 50% of the global view's patches masked for the student, iBOT-style head
  of 8,192 prototypes on the masked patch tokens; weight 0.25 x 0.25 from 80% of training.
* EMA teacher: ``ema.decay`` 0.996 from ``ema.start_step`` = the switch step (it starts as a
  copy of the student there).

  v5e-256 : mesh data=16 fsdp=16, 128 images per chip, no accumulation; remat full, scan.
            ``python -m clip_jax.plan`` compiles the switched-on program (the batches carry
            the views) for v5e:16x16: 885M params, 16.06 GiB per chip: it does NOT fit (the
            decoder is 49% of it: Gemma's 256k vocabulary, its float32 logits); without the
            decoder 8.20 GiB (docs/benchmarks.md, each term's share). Gradient accumulation or
            a chunked decoder loss is the fix, not yet compiled.
"""

import math

from clip_jax.recipes import laion_recipe

MESH = {"v5e-256": ((16, 16, 1), 1)}
# The TPU topology of each platform (python -m clip_jax.plan compiles the step for it).
TOPOLOGY = {"v5e-256": "v5e:16x16"}
# Where the data lives: edit for your cluster (or override with --config.data.train=...); the
# shards' KEY.json may carry "boxes" and "box_captions" (clip_jax/data/boxes.py).
SHARDS = "/data/webli/{00000..99999}.tar"
TOKENIZER = "json:/data/siglip2/tokenizer.json"  # SigLIP 2's Gemma tokenizer (256k)
BATCH = 32768
EXAMPLES = 40_000_000_000  # the paper's examples seen
SWITCH = 0.8  # SILC and TIPS (and the EMA teacher) from 80% of training
SIZE_SCALE = 0.25  # SigLIP 2's self-distillation weights x 0.25 at B size


def compose(c, decoder: dict, loc_bins: int, local_size: int = 0, heads: dict | None = None):
    """Add the recipe's terms to a SigLIP config ``c`` (shared with configs/siglip2_demo.py):
    the LocCa decoder (``decoder``: layers, width, heads, mlp_dim), SILC and TIPS switching on
    at :data:`SWITCH` with the EMA teacher; ``heads``: the self-distillation heads' sizes
    (default the paper's, config_schema.SELF_DISTILL)."""
    for k, v in decoder.items():
        c.model.decoder[k] = v
    c.model.decoder.loc_bins = loc_bins
    c.caption.weight = 1.0
    c.caption.task_probs = (1 / 3, 1 / 3, 1 / 3)  # captioning, AREF, GCAP
    c.caption.masked_pred_prob = 0.5  # CapPa's parallel prediction on half the caption rows
    c.silc.weight = 1.0 * SIZE_SCALE
    c.tips.weight = 0.25 * SIZE_SCALE
    c.silc.start_fraction = c.tips.start_fraction = SWITCH
    c.silc.local_size = local_size
    for term, sizes in (heads or {}).items():
        for k, v in sizes.items():
            c[term][k] = v
    c.ema.decay = 0.996
    c.ema.start_step = round(SWITCH * c.total_steps)
    return c


def get_config(platform="v5e-256"):
    if platform not in MESH:
        raise ValueError(f"configs/siglip2_b16.py:{platform}: platforms are {', '.join(MESH)}")
    mesh, accum = MESH[platform]
    c = laion_recipe("ViT-B-16-SigLIP2-256", BATCH, platform, mesh, accum, train=SHARDS,
                     tokenizer=TOKENIZER)
    c.total_steps = EXAMPLES // BATCH
    c.loss = "siglip"
    c.loss_impl = "blockwise"
    c.model.init_logit_scale = math.log(10.0)
    c.model.init_logit_bias = -10.0
    c.optimizer.lr = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_steps = 20_000
    return compose(c, dict(layers=6, width=768, heads=12, mlp_dim=3072), loc_bins=256)
