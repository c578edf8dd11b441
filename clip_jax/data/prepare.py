"""What a run needs on disk before its first batch: the demo corpus and the tokenizer.

Both are called by every process of a run; only process 0 writes shared files. They take plain
arguments (paths, sizes), never the model or the run config, and return what they made: the
caller decides what to do with it (e.g. point ``data.train`` at the demo shards).
"""

from __future__ import annotations

import json
import os
import time

import jax
from jax.experimental import multihost_utils

from clip_jax.data import demo, pipeline, tario, tfds_source
from clip_jax.data import tokenizer as tok_lib

TOKENIZER_TRAIN_CAPTIONS = 100_000  # captions a "train" tokenizer is fitted on
TOKENIZER_DIR = "tokenizer"  # under the workdir; reused on resume


def prepare_demo(root: str, train_samples: int, image_size: int, seed: int,
                 variant: str = "") -> dict:
    """Make sure the demo corpus exists in ``root`` (process 0 writes it, the others wait).

    Returns ``{"train": the training shard pattern, "card": the zeroshot.json path}`` (the
    card names its held-out eval pairs; zero-shot, retrieval and few-shot evals read it)."""
    root = os.path.abspath(root)
    card = os.path.join(root, "zeroshot.json")
    if jax.process_index() == 0:
        meta = demo.load_or_generate(root, train_samples=train_samples, image_size=image_size,
                                     seed=seed, verbose=True, variant=variant)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("demo corpus ready")
    if jax.process_index() != 0:
        with open(card) as f:
            meta = json.load(f)
    return {"train": os.path.join(root, meta["train_shards"]), "card": card}


def _first_captions(spec: str, limit: int) -> list[str]:
    captions = []
    for _, _, caption in tario.iterate_samples(spec, decode=False):
        if caption:
            captions.append(caption)
        if len(captions) >= limit:
            break
    return captions


# fewer: a vocabulary of byte symbols and filler, never saved (a small prepared tfds split of
# 75 captions, tests/test_tfds_train.py, still fits one)
MIN_TOKENIZER_CAPTIONS = 50


def _train_captions(data_cfg, limit: int) -> list[str]:
    """The first captions of ``data.train`` (webdataset) or, with a tfds split among the
    sources, of each source in turn (an equal share each, in order)."""
    if data_cfg.source == "webdataset":
        return _first_captions(data_cfg.train, limit)
    sources = pipeline.train_sources(data_cfg)
    captions = []
    for i, src in enumerate(sources):
        share = (limit - len(captions)) // (len(sources) - i)
        captions += (tfds_source.first_captions(src, share) if isinstance(
            src, tfds_source.TfdsSource) else _first_captions(list(src.shards), share))
    return captions


def prepare_tokenizer(data_cfg, workdir: str, vocab_size: int):
    """The run's tokenizer, saved in ``<workdir>/tokenizer`` (and reused from there on resume);
    None for synthetic data (token ids are made up).

    ``data_cfg.tokenizer``: ``clip_bpe:PATH`` | ``hf:PATH`` | ``train`` (fit a byte-level BPE of
    ``data_cfg.tokenizer_vocab_size`` tokens, else ``vocab_size``, on the first
    :data:`TOKENIZER_TRAIN_CAPTIONS` captions of the sources, ``data_cfg.train``'s shards
    and/or the tfds split of ``data_cfg.tfds_*``)."""
    if data_cfg.source == "synthetic":
        return None
    tok_dir = os.path.join(workdir, TOKENIZER_DIR)
    spec = data_cfg.tokenizer
    if os.path.exists(os.path.join(tok_dir, tok_lib.CONFIG_FILE)):
        return tok_lib.load_tokenizer(tok_dir)
    if spec == "train":
        t0 = time.time()
        captions = _train_captions(data_cfg, TOKENIZER_TRAIN_CAPTIONS)
        if len(captions) < MIN_TOKENIZER_CAPTIONS:  # refused before anything is saved
            raise ValueError(
                f"data.tokenizer='train' found {len(captions)} captions in the training data "
                f"(data.train={data_cfg.train!r}); fitting a tokenizer needs at least "
                f"{MIN_TOKENIZER_CAPTIONS}: check the shards, or give a tokenizer spec")
        # Every process fits the same tokenizer from the same captions (deterministic), so no
        # shared filesystem is needed; process 0 keeps the copy in the workdir.
        out = tok_dir if jax.process_index() == 0 else os.path.join(
            workdir, f".{TOKENIZER_DIR}.{jax.process_index()}")
        tok = tok_lib.train_tokenizer(captions, data_cfg.tokenizer_vocab_size or vocab_size, out)
        if jax.process_index() == 0:
            print(f"tokenizer: fitted a byte-level BPE of {tok.vocab_size:,} tokens on "
                  f"{len(captions):,} captions in {time.time() - t0:.1f} s ({out})", flush=True)
        return tok
    tok = tok_lib.load_tokenizer(spec)
    if jax.process_index() == 0:
        tok.save(tok_dir)
    return tok


def prepare_run(config, model_cfg, workdir: str):
    """The demo corpus (if configured) and the run's tokenizer, with ``config`` pointed at
    them: ``data.train`` and the eval cards at the demo, ``model.text.vocab_size`` at the
    tokenizer's (an explicit, different ``vocab_size`` is an error). ``model_cfg``: the
    config's resolved model. Returns the tokenizer."""
    # shards of one's own (or a tfds source) replace the demo
    if config.data.demo and not config.data.train and config.data.source != "tfds":
        corpus = prepare_demo(config.data.demo, config.data.demo_train_samples,
                              model_cfg.vision.image_size, config.data.demo_seed,
                              config.data.demo_variant)
        config.data.train = corpus["train"]
        for key in ("zeroshot", "retrieval", "fewshot"):
            if not config.eval[key] and key not in config.evals:
                config.eval[key] = corpus["card"]
    tok = prepare_tokenizer(config.data, workdir, model_cfg.text.vocab_size)
    if tok is None:
        return None
    explicit = config.model.text.vocab_size
    if explicit is not None and explicit != tok.vocab_size:
        raise ValueError(f"the tokenizer ({config.data.tokenizer}) has {tok.vocab_size} tokens "
                         f"but model.text.vocab_size={explicit}; drop the override or make them "
                         "equal")
    if model_cfg.text.vocab_size != tok.vocab_size:
        config.model.text.vocab_size = tok.vocab_size
    return tok
