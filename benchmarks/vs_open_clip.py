"""clip_jax vs open_clip: the same architecture, the same batch, one training step each.

    python benchmarks/vs_open_clip.py                       # every preset below
    python benchmarks/vs_open_clip.py --preset tiny --rounds 5
    python benchmarks/vs_open_clip.py --model-config my_model.json --batch 64

Both models are built from one open_clip model-config JSON (``--model-config``, or a preset:
``tiny`` = benchmarks/model_configs/bench-tiny.json at batch 128, ``ViT-B-32`` = open_clip's own
JSON at batch 16, ``ViT-B-16-SigLIP`` = open_clip's JSON (timm trunk with the MAP head,
bidirectional text) at batch 16, ``RN50`` = open_clip's RN50.json at batch 32,
``convnext_base`` = open_clip's JSON at batch 16) and must have the same parameter count. Each
framework runs in its own child process (same machine, same threads: all cores), built once and
warmed up; the parent then alternates them, ``--steps`` training steps at a time, for
``--rounds`` rounds, and reports the median samples/s of each and the ratio
clip_jax / open_clip as one JSON line per preset.

A step is what a trainer runs: forward both towers, the CLIP loss (open_clip's ``ClipLoss``;
clip_jax's ``clip_loss``; for a JSON with ``init_logit_bias`` the sigmoid loss, ``SigLipLoss`` and
``siglip_loss``), backward, AdamW (lr 5e-4, betas (0.9, 0.98), eps 1e-6, wd 0.2), the
logit-scale clamp. float32. Inputs are fixed random batches already in memory (images as the
framework's trainer receives them: uint8 pixels for clip_jax, normalised float32 tensors for
open_clip), so the input pipeline is not timed.

Needs torch, torchvision and open-clip-torch (not dependencies of clip_jax; on this machine
``pip install torch==2.14.1 torchvision==0.29.1 open-clip-torch==3.3.0``); without them it
prints why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = {
    "tiny": (os.path.join(HERE, "model_configs", "bench-tiny.json"), 128),
    "ViT-B-32": (os.path.join(HERE, "model_configs", "ViT-B-32.json"), 16),
    "ViT-B-16-SigLIP": (os.path.join(HERE, "model_configs", "ViT-B-16-SigLIP.json"), 16),
    # OpenAI's ModifiedResNet (BatchNorm, attention pool) at 224 px: open_clip's RN50.json
    "RN50": (os.path.join(HERE, "model_configs", "RN50.json"), 32),
    # timm's ConvNeXt-B trunk with a linear projection, as open_clip builds convnext_base
    "convnext_base": (os.path.join(HERE, "model_configs", "convnext_base.json"), 16),
    # Hugging Face text towers (open_clip's HFTextEncoder, random init, hf_model_name a directory
    # beside the JSON holding the transformers config.json): XLM-R base with ViT-B/32, open_clip's
    # xlm-roberta-base-ViT-B-32 (mean pooler, MLP projection); and bench-tiny's image tower with
    # a 4-layer width-256 XLM-R (XLM-R's 250k vocabulary)
    "xlm-roberta-base-ViT-B-32": (os.path.join(HERE, "model_configs",
                                               "xlm-roberta-base-ViT-B-32.json"), 16),
    "bench-tiny-xlmr": (os.path.join(HERE, "model_configs", "bench-tiny-xlmr.json"), 128),
}
LR, BETAS, EPS, WD = 5e-4, (0.9, 0.98), 1e-6, 0.2


def _batch(cfg: dict, batch: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    size, ctx, vocab = v["image_size"], t.get("context_length", 77), t.get("vocab_size", 49408)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    lengths = rng.integers(5, ctx, batch)
    text = rng.integers(1, vocab - 2, (batch, ctx)).astype(np.int32)
    for i, n in enumerate(lengths):  # sot ... eot, then padding: eot is the argmax
        text[i, 0], text[i, n], text[i, n + 1:] = vocab - 2, vocab - 1, 0
    return images, text


class _JaxRunner:
    def __init__(self, config_path: str, batch: int):
        import jax

        from clip_jax import config as config_lib
        from clip_jax import input_pipeline, models, train

        c = config_lib.base_config()
        c.model.open_clip_config = config_path
        with open(config_path) as f:
            if "init_logit_bias" in json.load(f):
                c.loss = "siglip"
        c.batch_size = batch
        c.total_steps = 10_000
        c.optimizer.lr, c.optimizer.warmup_steps = LR, 0
        c.optimizer.b1, c.optimizer.b2 = BETAS
        c.optimizer.eps, c.optimizer.weight_decay = EPS, WD
        c.optimizer.grad_clip_norm = 0.0  # open_clip clips only when asked
        self.setup = train.build(c)
        self.state = train.init_state(self.setup)
        self.step = train.make_train_step(self.setup)
        with open(config_path) as f:
            images, text = _batch(json.load(f), batch)
        self.batch = input_pipeline.to_global(self.setup.batch_sharding,
                                              {"image": images, "text": text})
        self.params = models.count_params(self.state.params)
        self._jax = jax

    def run(self, steps: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        self._jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t0, time.process_time() - c0


class _TorchRunner:
    def __init__(self, config_path: str, batch: int):
        import numpy as np
        import open_clip
        import torch
        from open_clip.loss import ClipLoss, SigLipLoss

        torch.set_num_threads(os.cpu_count() or 1)
        with open(config_path) as f:
            cfg = json.load(f)
        torch.manual_seed(0)
        build = open_clip.model.CustomTextCLIP if cfg.pop("custom_text", False) \
            else open_clip.model.CLIP
        self.model = build(**cfg)
        self.model.train()
        self.params = sum(p.numel() for p in self.model.parameters())
        decay = [p for n, p in self.model.named_parameters()
                 if p.ndim >= 2 and "embedding" not in n]
        no_decay = [p for n, p in self.model.named_parameters()
                    if not (p.ndim >= 2 and "embedding" not in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=LR, betas=BETAS, eps=EPS)
        self.loss = SigLipLoss() if "init_logit_bias" in cfg else ClipLoss()
        images, text = _batch(cfg, batch)
        mean = np.asarray(open_clip.OPENAI_DATASET_MEAN, np.float32) * 255
        std = np.asarray(open_clip.OPENAI_DATASET_STD, np.float32) * 255
        pixels = ((images.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        self.images = torch.from_numpy(np.ascontiguousarray(pixels))
        self.text = torch.from_numpy(text.astype(np.int64))
        self._torch = torch

    def run(self, steps: int) -> tuple[float, float]:
        torch = self._torch
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss(*self.model(self.images, self.text))
            loss.backward()
            self.opt.step()
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, 4.6052)
        return time.perf_counter() - t0, time.process_time() - c0


def _worker(kind: str, config_path: str, batch: int, conn) -> None:
    try:
        runner = (_JaxRunner if kind == "clip_jax" else _TorchRunner)(config_path, batch)
        t0 = time.perf_counter()
        runner.run(2)  # compile / warm-up
        conn.send({"params": runner.params, "warmup_seconds": time.perf_counter() - t0})
        while True:
            steps = conn.recv()
            if steps is None:
                return
            conn.send(runner.run(steps))
    except Exception as e:  # reported by the parent
        conn.send({"error": f"{kind}: {type(e).__name__}: {e}"})


def _recv(kind: str, proc, conn):
    """The worker's next message; a worker that died (e.g. killed for memory) is an error."""
    try:
        return conn.recv()
    except EOFError:
        proc.join(timeout=10)
        raise RuntimeError(f"{kind}: the worker process died (exit code {proc.exitcode}; "
                           "-9 is usually the kernel's out-of-memory killer)") from None


def _absolute_hf_dir(config_path: str) -> str:
    """The JSON itself, or (an HF text tower whose ``hf_model_name`` is a directory beside it) a
    copy naming that directory by its absolute path, so that both frameworks find it."""
    with open(config_path) as f:
        cfg = json.load(f)
    name = cfg.get("text_cfg", {}).get("hf_model_name")
    beside = os.path.join(os.path.dirname(os.path.abspath(config_path)), name or "")
    if not name or os.path.isabs(name) or not os.path.isdir(beside):
        return config_path
    for key in ("hf_model_name", "hf_tokenizer_name"):
        cfg["text_cfg"][key] = beside
    import tempfile

    fd, path = tempfile.mkstemp(suffix=f"-{os.path.basename(config_path)}")
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    return path


def compare(config_path: str, batch: int, rounds: int, steps: int) -> dict:
    ctx = mp.get_context("spawn")
    name, config_path = os.path.basename(config_path), _absolute_hf_dir(config_path)
    workers = {}
    for kind in ("clip_jax", "open_clip"):  # built one after the other: no overlap
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(kind, config_path, batch, child), daemon=True)
        proc.start()
        child.close()  # only the child holds its end: its death is EOF here, not a hang
        info = _recv(kind, proc, parent)
        if "error" in info:
            raise RuntimeError(info["error"])
        workers[kind] = (proc, parent, info)
    counts = {k: w[2]["params"] for k, w in workers.items()}
    if counts["clip_jax"] != counts["open_clip"]:
        raise RuntimeError(f"parameter counts differ: {counts}")
    rates: dict[str, list[float]] = {k: [] for k in workers}
    cpu: dict[str, list[float]] = {k: [] for k in workers}
    for _ in range(rounds):
        for kind, (_, conn, _) in workers.items():
            conn.send(steps)
            wall, cpu_s = _recv(kind, workers[kind][0], conn)
            rates[kind].append(batch * steps / wall)
            cpu[kind].append(cpu_s / steps)
    for proc, conn, _ in workers.values():
        conn.send(None)
        proc.join(timeout=30)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "model_config": name, "batch": batch, "params": counts["clip_jax"],
        "cpu_count": os.cpu_count(), "rounds": rounds, "steps_per_round": steps,
        "clip_jax_samples_per_sec": round(med["clip_jax"], 2),
        "open_clip_samples_per_sec": round(med["open_clip"], 2),
        "ratio": round(med["clip_jax"] / med["open_clip"], 3),
        "clip_jax_rounds": [round(r, 2) for r in rates["clip_jax"]],
        "open_clip_rounds": [round(r, 2) for r in rates["open_clip"]],
        # CPU seconds (all threads) per step: less sensitive than wall time to other load
        "cpu_seconds_per_step": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
        "warmup_seconds": {k: round(w[2]["warmup_seconds"], 1) for k, w in workers.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), action="append",
                    help="architecture + batch (default: all presets)")
    ap.add_argument("--model-config", help="an open_clip model-config JSON instead of a preset")
    ap.add_argument("--batch", type=int, help="override the preset's batch size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="steps per framework per round")
    args = ap.parse_args()
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        print(json.dumps({"skipped": f"open_clip/torch not importable: {e}"}))
        return
    if args.model_config:
        runs = [(args.model_config, args.batch or 128)]
    else:
        runs = [(PRESETS[p][0], args.batch or PRESETS[p][1]) for p in
                (args.preset or list(PRESETS))]
    status = 0
    for path, batch in runs:
        try:
            print(json.dumps(compare(path, batch, args.rounds, args.steps)), flush=True)
        except RuntimeError as e:  # one line per failed comparison; the others still run
            print(f"error: {os.path.basename(path)} at batch {batch}: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
