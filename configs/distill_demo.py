"""Distillation on the demo: a smaller student learns from a demo run (the teacher), online or
from the teacher's stored embeddings.

    python -m clip_jax.train --config configs/demo.py --workdir workdirs/demo       # the teacher
    python -m clip_jax.train --config configs/distill_demo.py:workdirs/demo \\
        --workdir workdirs/distilled                                                # distilled
    python -m clip_jax.train --config configs/distill_demo.py:workdirs/demo,scratch \\
        --workdir workdirs/scratch                                                  # baseline

    python -m clip_jax.embed --model workdirs/demo --data 'data/demo/train/{00000..00029}.tar' \\
        --out data/demo_emb                                                         # stored
    python -m clip_jax.train --config configs/distill_demo.py:workdirs/demo,stored=data/demo_emb \\
        --workdir workdirs/stored

The argument is the teacher (any model source: the demo's workdir, a bundle, ...), then
``,scratch`` for the same student trained without it, or ``,stored=DIR`` to read the
teacher's embeddings from ``DIR`` (``distill.embeddings``) instead of running it. The
student is half the demo model's width and depth in each tower (about a fifth of its
parameters), with the teacher's tokenizer, the same data and the same steps; all runs end
with the demo's held-out zero-shot evaluation (``eval/zeroshot/top1`` on 12 colour x shape
pairs never seen in training).

Measured (docs/benchmarks.md, "Distillation on the demo": second and third figures; 2 CPU
cores, teacher = configs/demo.py on a 1500-step schedule, held-out zero-shot 0.7717): held-out
zero-shot top-1 from scratch 0.601 (400 steps, seeds 0-3, range 2.7 points) and 0.585 (1200
steps, range 6.3), from stored embeddings 0.572 (the teacher at step 1000) and 0.588:
distillation does not beat from-scratch on held-out zero-shot here, with any of the
objectives, data sizes, depths and lengths tried; retrieval mean recall rises on every paired
seed (1200 steps: 0.368 -> 0.385).
Step: stored 0.995x the from-scratch step in CPU seconds, online 2.54x.
"""

from clip_jax.config import base_config


def get_config(arg: str = "workdirs/demo"):
    teacher, *mode = arg.split(",")
    c = base_config()
    c.model.name = "small-demo"  # the student: 96/2 layers image, 64/2 layers text, embed 128
    c.model.vision.width, c.model.vision.layers, c.model.vision.mlp_dim = 96, 2, 384
    c.model.text.width, c.model.text.layers, c.model.text.mlp_dim = 64, 2, 256
    c.batch_size = 128
    c.total_steps = 400
    c.log_every_steps = 50
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 0.1
    c.data.source = "webdataset"
    c.data.demo = "data/demo"
    c.data.demo_train_samples = 30000
    c.data.tokenizer = f"{teacher}/tokenizer"  # the teacher's: its token ids mean the same
    c.data.workers = 1
    c.data.shuffle_buffer = 2000
    c.checkpoint.every_steps = 0
    c.eval.batch_size = 240
    stored = [m.split("=", 1)[1] for m in mode if m.startswith("stored=")]
    if stored:  # the teacher's embeddings written by clip_jax.embed: no teacher in the step
        c.distill.embeddings = stored[0]
    elif "scratch" not in mode:
        c.distill.teachers = (teacher,)
    if "scratch" not in mode:
        c.distill.clip_weight = 1.0
        c.distill.kd_weight = 1.0
        c.distill.teacher_logit_scale = 100.0  # MobileCLIP's (0 = the teacher's own, ~16 here)
    return c
