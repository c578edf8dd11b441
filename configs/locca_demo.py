"""CLIP + LocCa's decoder tasks on the offline demo corpus on a CPU: configs/coca_demo.py whose
decoder also learns boxes.

    python -m clip_jax.train --config configs/locca_demo.py --workdir workdirs/locca_demo
    python -m clip_jax.evaluate --model workdirs/locca_demo --eval referring \\
        --dataset data/demo/zeroshot.json

The demo corpus writes each shape's tight box and its referring expression ("red circle",
"left red circle" when there are several) into ``KEY.json`` (:mod:`clip_jax.data.demo`); the
pipeline carries up to ``caption.max_boxes`` of them per image through the random crop
(:mod:`clip_jax.data.boxes`). ``model.decoder.loc_bins`` (32: 2 px at 64 px) appends three task
tokens and the coordinate bins to the decoder's vocabulary, and each example trains one task
drawn with ``caption.task_probs`` (uniform here): its caption, the box of one of its
expressions (AREF), or the expression of one of its boxes (GCAP) (:mod:`clip_jax.objectives.
locca`, :mod:`clip_jax.models.locca`). ``evaluate --eval referring`` decodes the box of each
eval expression and reports the share with IoU > 0.5.
"""

import importlib.util
import os

_COCA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coca_demo.py")


def _coca_config():
    spec = importlib.util.spec_from_file_location("clip_jax_coca_demo_config", _COCA)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _coca_config()
    c.model.decoder.loc_bins = 32
    c.caption.task_probs = (1 / 3, 1 / 3, 1 / 3)  # captioning, AREF, GCAP
    c.caption.max_boxes = 3  # the demo draws at most 3 shapes
    return c
