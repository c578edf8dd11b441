"""CLIP + captioning (CoCa-style) on the offline demo corpus on a CPU: configs/demo.py with a
captioning decoder on the image tower's tokens.

    python -m clip_jax.train --config configs/coca_demo.py --workdir workdirs/coca_demo
    python -m clip_jax.predict --model workdirs/coca_demo --image a.png --caption [--beams 4]
    python -m clip_jax.evaluate --model workdirs/coca_demo --eval captioning \\
        --dataset 'data/demo/eval/{00000..00001}.tar'

The model is ``small-demo`` (64px images in 16px patches, image width 192, text width 128, 4
layers each) plus a 2-layer decoder of width 128 (``model.decoder``, :mod:`clip_jax.models.decoder`)
that cross-attends to the ViT's 17 un-pooled tokens and predicts each caption token from the
ones before it (the text tower's vocabulary and context). The loss is the contrastive loss plus
``caption.weight`` x the caption cross-entropy (:mod:`clip_jax.objectives.captioning`);
``--config.caption.masked_pred_prob=0.75`` trains CapPa's mix instead (75% of each batch
decoded in parallel from masked inputs). Data, tokenizer, schedule and the in-training
zero-shot evaluation on the 12 held-out colour x shape pairs are the demo's; 400 steps.

After 400 steps the captions name the colour, and the shape of training pairs only at times.
They never name the shape of a held-out pair, because the decoder learns that those pairs never
occur (docs/benchmarks.md, "Why the shape is missing"; ``benchmarks/caption_demo.py`` counts).
CapPa, caption weight 2 and 8px patches did not change that within minutes of CPU training.
"""

import importlib.util
import os

_DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")


def _demo_config():
    spec = importlib.util.spec_from_file_location("clip_jax_demo_config", _DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _demo_config()
    c.model.decoder.layers = 2
    c.model.decoder.width = 128
    c.model.decoder.heads = 2
    c.model.decoder.mlp_dim = 512
    c.caption.weight = 1.0
    c.total_steps = 400
    c.eval.every_steps = 200
    c.checkpoint.every_steps = 200
    return c
