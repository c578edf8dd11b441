"""A small OpenAI-style ResNet CLIP trained on the offline demo corpus on a CPU (the ResNet twin
of configs/demo.py).

    python -m clip_jax.train --config configs/rn_demo.py --workdir workdirs/rn_demo

The image tower is OpenAI's ModifiedResNet (clip_jax/models/resnet.py) at a demo size: stem
width 16, one Bottleneck per stage (open_clip's ``layers: [1, 1, 1, 1]``), 512 channels into
the attention pool (8 heads) at 64 px; BatchNorm statistics over the global batch, carried in
the train state's ``batch_stats``. Text tower, data, tokenizer, schedule and evaluation as
configs/demo.py (zero-shot on the 12 held-out colour x shape pairs is logged as
``eval/zeroshot/acc1``). The same run from open_clip's JSON: ``--config.model.name=''
--config.model.open_clip_config=FILE.json``.
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
    c.model.vision.family = "resnet"
    c.model.vision.stages = (1, 1, 1, 1)
    c.model.vision.width = 16
    c.model.vision.heads = 8
    return c
