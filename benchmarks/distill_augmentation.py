"""How far the training augmentation moves a teacher's targets from the stored (un-augmented) ones.

    python benchmarks/distill_augmentation.py --teacher workdirs/teacher \\
        --data 'data/demo/train/{00000..00029}.tar' --samples 1024 [--scale 0.9 1.0]

``clip_jax.embed`` stores the teacher's embedding of the evaluation transform (shorter side
resized, center crop); online distillation gives the teacher the student's random resized crop
(``transforms.random_resized_crop``, area ``--scale``, the training default 0.9-1). For the first
``--samples`` samples this prints, as one JSON line: the cosine between the teacher's image
embeddings of the two views, and over batches of 128 the teacher's image->text distributions
(at ``--logit-scale``, 100 as ``configs/distill_demo.py``) from each view: their KL divergence
(stored || augmented, nats) and how often their argmax agrees.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from clip_jax import inference
from clip_jax.data import tario, transforms


def _softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--scale", type=float, nargs=2, default=transforms.TRAIN_SCALE)
    p.add_argument("--logit-scale", type=float, default=100.0)
    args = p.parse_args()
    model = inference.load(args.teacher, batch_size=128)
    size = model.cfg.vision.image_size
    rng = np.random.default_rng(0)
    plain, aug, captions = [], [], []
    for _, image, caption in tario.iterate_samples(args.data):
        plain.append(image)
        crop = transforms.random_resized_crop(image, size, rng, tuple(args.scale))
        aug.append(crop)
        captions.append(caption)
        if len(plain) == args.samples:
            break
    u = model.encode_image(model.preprocess(plain))
    a = model.encode_image(model.preprocess(aug))  # already at size: resize/crop are identity
    t = model.encode_text(captions)
    cos = np.sum(u * a, 1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(a, axis=1))
    kl, agree = [], []
    for i in range(0, len(u) - 127, 128):
        pu = _softmax(args.logit_scale * u[i:i + 128] @ t[i:i + 128].T)
        pa = _softmax(args.logit_scale * a[i:i + 128] @ t[i:i + 128].T)
        kl.append(np.mean(np.sum(pu * (np.log(pu + 1e-12) - np.log(pa + 1e-12)), 1)))
        agree.append(np.mean(pu.argmax(1) == pa.argmax(1)))
    print(json.dumps({"samples": len(u), "scale": list(args.scale),
                      "image_cosine_mean": round(float(cos.mean()), 4),
                      "image_cosine_p05": round(float(np.quantile(cos, 0.05)), 4),
                      "kd_target_kl_nats": round(float(np.mean(kl)), 4),
                      "kd_target_argmax_agreement": round(float(np.mean(agree)), 4)}))


if __name__ == "__main__":
    main()
