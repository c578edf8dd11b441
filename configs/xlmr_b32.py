"""open_clip's multilingual ``xlm-roberta-base-ViT-B-32`` (its laion5b_s13b_b90k recipe's shape):
a ViT-B/32 image tower from scratch and the pretrained XLM-R base text tower (mean pooler, MLP
projection), global batch 90,112, 13B samples seen.

    python -m clip_jax.train --config configs/xlmr_b32.py:v5e-256 --workdir gs://B/runs/xlmr
    python -m clip_jax.plan --config configs/xlmr_b32.py:v5e-256     # compiled for v5e:16x16

``XLMR`` is a transformers ``xlm-roberta-base`` directory (its config.json, model.safetensors
and tokenizer.json: ``huggingface-cli download xlm-roberta-base``): the text tower starts from
its encoder (``checkpoint.init_from_params='^text/transformer/'``, the masked-LM head's
``roberta.`` prefix dropped) and its tokenizer.json tokenizes (``<s> text </s>``, ``<pad>``=1).
The model is open_clip's JSON (``hf_model_name: xlm-roberta-base``, whose architecture clip_jax
knows without the hub).

Platform argument (after the colon), per-device batch, mesh and accumulation:
  v5e-256 : 256 chips  ->   352/device, mesh data=16 fsdp=16
"""

import json

from clip_jax.recipes import laion_recipe

MESH = {"v5e-256": ((16, 16, 1), 1)}
TOPOLOGY = {"v5e-256": "v5e:16x16"}
BATCH = 90_112  # open_clip's b90k, a multiple of 256 chips
SAMPLES = 13_000_000_000  # s13b
SHARDS = "/data/laion5b/{00000..231349}.tar"  # edit for your cluster (or --config.data.train)
XLMR = "/data/xlm-roberta-base"
TOKENIZER = XLMR  # its tokenizer.json
OPEN_CLIP_JSON = {  # open_clip's model_configs/xlm-roberta-base-ViT-B-32.json
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"hf_model_name": "xlm-roberta-base", "hf_tokenizer_name": "xlm-roberta-base",
                 "hf_pooler_type": "mean_pooler"}}


def get_config(platform="v5e-256"):
    mesh, accum = MESH[platform]
    c = laion_recipe("ViT-B-32", BATCH, platform, mesh, accum, train=SHARDS, tokenizer=TOKENIZER,
                     epochs=1, samples_per_epoch=SAMPLES)
    c.model.name = ""
    c.model.open_clip_config = json.dumps(OPEN_CLIP_JSON)
    c.checkpoint.init_from = XLMR
    c.checkpoint.init_from_params = "^text/transformer/"
    return c
