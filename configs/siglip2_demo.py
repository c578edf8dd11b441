"""The SigLIP 2 recipe (configs/siglip2_b16.py's composition) on the offline demo corpus on a CPU:
configs/siglip_demo.py plus LocCa's decoder tasks and, in the last 20% of the steps, SILC and
TIPS from the EMA teacher.

    python -m clip_jax.train --config configs/siglip2_demo.py --workdir workdirs/siglip2_demo
    python -m clip_jax.evaluate --model workdirs/siglip2_demo --eval zeroshot,segmentation \\
        --dataset data/demo/zeroshot.json
    python -m clip_jax.evaluate --model workdirs/siglip2_demo --eval referring \\
        --dataset data/demo/zeroshot.json

The same terms and switches as the B/16 recipe (:func:`siglip2_b16.compose`), at the demo's
size: the ``small-demo`` SigLIP (64 px in 16 px patches, widths 192 / 128, 4 layers each), a
2-layer decoder of width 128 (half the text tower's layers, as the recipe), 32 coordinate bins
(2 px at 64 px), the demo's up to 3 boxes per picture; SILC's 8 local views of 32 px (DINO's
96/224 of the image in whole patches) and TIPS's 50% masked patches from step 320 of 400 (80%),
EMA decay 0.996 from there. The self-distillation heads are smaller than the paper's (hidden
512, bottleneck 128, 4,096 and 1,024 prototypes instead of 2,048 / 256 / 65,536 / 8,192): at
demo scale the paper's heads dominate the CPU step (docs/self_distillation.md).
"""

import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"clip_jax_{name}_config",
                                                  os.path.join(_HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HEADS = {"silc": dict(head_hidden=512, head_bottleneck=128, head_dim=4096),
         "tips": dict(head_hidden=512, head_bottleneck=128, head_dim=1024)}


def get_config():
    c = _load("siglip_demo").get_config()
    c.total_steps = 400
    c.eval.every_steps = 200
    c.checkpoint.every_steps = 200
    c.caption.max_boxes = 3  # the demo draws at most 3 shapes
    return _load("siglip2_b16").compose(
        c, dict(layers=2, width=128, heads=2, mlp_dim=512), loc_bins=32, heads=HEADS)
