"""Export and import: bundles, open_clip and Hugging Face CLIP (the formats live in
:mod:`clip_jax.bundle` and :mod:`clip_jax.interop`; :mod:`clip_jax.sources` reads any of them).

CLI::

    # SRC: any model source (a training workdir or its checkpoints/ directory, a bundle, an HF
    # CLIP directory, open_clip weights; see clip_jax.sources)
    python -m clip_jax.export bundle    --checkpoint SRC --out DIR [--weights ema]
    python -m clip_jax.export open_clip --checkpoint SRC --out DIR
    python -m clip_jax.export hf        --checkpoint SRC --out DIR [--hf-model-type metaclip_2]
    # open_clip (.safetensors, or a .pt/.bin state dict read with torch.load(weights_only=True))
    # or an HF CLIP directory -> bundle (with --tokenizer, --scan); any source is also a valid
    # ``checkpoint.init_from`` (fine-tuning)
    python -m clip_jax.export import --from {open_clip,hf} --src PATH [--model-config JSON]
        [--tokenizer SPEC] [--scan] --out BUNDLE
    # open_clip CoCa (coca_*.json: the attentional pooler, the text tower's class token and the
    # decoder on its tokens) goes both ways like CLIP; a CapPa decoder exports as a bundle only
    # every command takes --image-size N / --patch-size P: position embeddings and patch kernel
    # resampled (open_clip's resize_pos_embed / FlexiViT), one line says what changed
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from clip_jax import bundle, cli, models, sources
from clip_jax.data.tokenizer import load_tokenizer
from clip_jax.interop import hf, keymap, open_clip


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m clip_jax.export",
        description="Export a clip_jax checkpoint (bundle, open_clip, Hugging Face) or import "
                    "open_clip / Hugging Face CLIP weights into a bundle.")
    sub = p.add_subparsers(dest="command", required=True)
    helps = {"bundle": "self-contained inference bundle (clip_jax.load)",
             "open_clip": "open_clip state dict (safetensors) + open_clip_config.json",
             "hf": "transformers CLIPModel / MetaClip2Model / SiglipModel directory"}
    for name, text in helps.items():
        s = sub.add_parser(name, help=text)
        s.add_argument("--checkpoint", required=True,
                       help="any model source: training workdir or its checkpoints/ "
                            "directory, bundle, HF CLIP directory, open_clip weights")
        s.add_argument("--out", required=True, help="output directory")
        s.add_argument("--weights", choices=sources.WEIGHTS, default="raw",
                       help="ema: the weight average of a training run with ema.decay > 0")
        _resample_args(s)
        if name == "hf":
            s.add_argument("--hf-model-type", choices=tuple(hf.CLIP_TYPES), default=None,
                           help="a CLIP-architecture model as CLIPModel or MetaClip2Model "
                                "(default: metaclip_2 when its end token is id 2, else clip)")
    s = sub.add_parser("import", help="open_clip / HF CLIP weights -> bundle (also usable as "
                                      "checkpoint.init_from for fine-tuning)")
    s.add_argument("--from", dest="src_format", required=True, choices=keymap.FORMATS)
    s.add_argument("--src", required=True,
                   help="open_clip: weights file (.safetensors/.pt/.bin) or directory; "
                        "hf: model directory")
    s.add_argument("--model-config", default=None,
                   help="open_clip model-config JSON (path or text) or preset name; default: "
                        "open_clip_config.json next to the weights")
    s.add_argument("--tokenizer", default=None,
                   help="tokenizer spec to bundle (clip_bpe:PATH, hf:PATH, sentencepiece:PATH, "
                        "json:PATH, or a directory); "
                        "default: the one found next to the weights")
    s.add_argument("--scan", action="store_true",
                   help="store the blocks stacked (model.scan=True layout)")
    s.add_argument("--allow-damaged-weights", action="store_true",
                   help="import tensors holding NaN/inf or negative variances (refused by "
                        "default: every embedding of such a model is NaN)")
    s.add_argument("--out", required=True, help="bundle directory to write")
    _resample_args(s)
    return p


def _resample_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--image-size", type=int, default=None,
                   help="another input resolution: the position embeddings are resampled "
                        "(class token kept, bicubic; without one bilinear)")
    s.add_argument("--patch-size", type=int, default=None,
                   help="another patch size: the patch kernel is resized (FlexiViT "
                        "pseudo-inverse) and the position embeddings resampled")


def _vision(args) -> dict:
    """The ``vision`` overrides --image-size / --patch-size ask for ({} when neither)."""
    v = {"image_size": args.image_size, "patch_size": args.patch_size}
    return {"vision": {k: x for k, x in v.items() if x is not None}} if any(
        x is not None for x in v.values()) else {}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    if args.command == "import":
        if args.src_format == "open_clip":
            cfg, params, tok, pre = open_clip.import_open_clip(
                args.src, args.model_config, args.scan, args.allow_damaged_weights)
        else:
            if args.model_config:
                raise cli.UserError("--model-config applies to --from open_clip only (HF "
                                    "directories carry their config.json)")
            cfg, params, tok, pre = hf.import_hf(args.src, args.scan, args.allow_damaged_weights)
        if _vision(args):
            s = sources.refit(sources.Source(args.src_format, Path(args.src), cfg, params, tok,
                                             pre), cfg.replace(**_vision(args)))
            cfg, params, pre = s.cfg, s.params, s.preprocess
        if args.tokenizer:
            tok = load_tokenizer(args.tokenizer)
        if tok is None:  # (an HF directory's reader has said why, in its note)
            why = "no tokenizer found next to the weights; " * (args.src_format == "open_clip")
            print(f"warning: {why}the bundle can encode token ids only (pass --tokenizer SPEC "
                  "to include one)", file=sys.stderr)
        bundle.save_bundle(out, params, cfg, tok, pre)
        print(f"wrote bundle {out} ({models.count_params(params):,} parameters)")
        return 0
    src = Path(args.checkpoint)
    if out.resolve() == src.resolve():
        raise cli.UserError("--out must differ from --checkpoint")
    s = sources.resolve(src, overrides=_vision(args), weights=args.weights)
    cfg, params, tok, pre = s.cfg, s.params, s.tokenizer, s.preprocess
    if args.command == "bundle":
        bundle.save_bundle(out, params, cfg.replace(remat=False), tok, pre)
    elif args.command == "open_clip":
        open_clip.export_open_clip(out, params, cfg, tok, pre)
    else:
        hf.export_hf(out, params, cfg, tok, pre, args.hf_model_type)
    if tok is None:
        print("warning: no tokenizer found with the checkpoint; none was exported",
              file=sys.stderr)
    print(f"wrote {args.command} export {out} ({models.count_params(params):,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
