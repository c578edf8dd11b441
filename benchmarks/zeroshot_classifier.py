"""Building a zero-shot classifier: N class names x T templates through the text tower.

    python benchmarks/zeroshot_classifier.py --model ViT-B-32 --classes 1000 --templates 80
    python benchmarks/zeroshot_classifier.py --model workdirs/demo --classes 1000 --templates 80

The suite builds one classifier per model and dataset (``clip_jax.evaluate.suite``), and
ImageNet's (1000 classes x the paper's 80 templates = 80,000 prompts) is its slowest. This times
exactly that call, :func:`clip_jax.inference.build_zeroshot_classifier` with an
:class:`~clip_jax.inference.InferenceModel`'s ``encode_text`` (tokenise on the host, encode in
fixed-shape batches on all local devices), after one warm-up batch (the compile), with ImageNet's
class names and templates. ``--model`` is a preset (random weights, its standard tokenizer) or any
model source. ``--classes`` below 1000 times the first N classes and extrapolates linearly to
1000 (the cost is per prompt). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32", help="a preset or any model source")
    ap.add_argument("--classes", type=int, default=1000, help="the first N ImageNet classes")
    ap.add_argument("--templates", type=int, default=80, help="the first T of the 80 templates")
    ap.add_argument("--batch", type=int, default=256, help="prompts per encoder call")
    ap.add_argument("--full-context", action="store_true",
                    help="encode every prompt at the full context (no padding cut), for an A/B")
    args = ap.parse_args()

    import jax

    from clip_jax import inference, models
    from clip_jax.evaluate import templates as tmpl

    if args.model in inference.list_models():
        _, params, _, tokenizer = inference.create_model(args.model)
        enc = inference.InferenceModel(models.get_model_config(args.model), params, tokenizer,
                                       batch_size=args.batch)
    else:
        enc = inference.load(args.model, batch_size=args.batch)
    if args.full_context:
        enc._trim = lambda ids: ids
    names = tmpl.IMAGENET_CLASSNAMES[:args.classes]
    templates = tmpl.OPENAI_IMAGENET_TEMPLATES[:args.templates]
    t0 = time.perf_counter()
    enc.encode_text([templates[0].format(names[0])] * args.batch)  # compile
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf = inference.build_zeroshot_classifier(enc.encode_text, names, templates,
                                              batch_size=args.batch)
    jax.block_until_ready(clf)
    seconds = time.perf_counter() - t0
    prompts = len(names) * len(templates)
    print(json.dumps({
        "model": os.path.basename(os.path.normpath(args.model)), "classes": len(names),
        "templates": len(templates), "prompts": prompts, "full_context": args.full_context,
        "batch": args.batch,
        "context_length": enc.cfg.text.context_length, "text_width": enc.cfg.text.width,
        "text_layers": enc.cfg.text.layers, "devices": jax.local_device_count(),
        "compile_seconds": round(compile_s, 2), "seconds": round(seconds, 2),
        "prompts_per_second": round(prompts / seconds, 1),
        "seconds_for_1000x80": round(seconds / prompts * 80_000, 1),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
