"""The one config object: every key a run understands, with defaults.

Config files in ``configs/`` start from :func:`base_config` and change what they need; the
result is *locked*, so a typo in a config file or on the command line
(``--config.optimzer.lr=1e-3``) fails at once with the offending key named.

Model config: ``model.name`` picks a preset (``clip_jax.models.PRESETS``) or
``model.open_clip_config`` points at an open_clip model-config JSON; any of the placeholder
fields below (``model.embed_dim``, ``model.vision.width``...) then overrides that base.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Mapping

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags

from clip_jax import cli, config_schema, models, optimizer, stability
from clip_jax.cli import UserError
from clip_jax.data import naflex

P = config_dict.placeholder


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 64  # global batch (all processes, all devices)
    c.total_steps = 100
    c.log_every_steps = 10
    c.loss = "clip"  # "clip" (softmax, symmetric CE) or "siglip" (sigmoid, with bias)
    c.loss_impl = "dense"  # "dense" (local rows x global columns) or "blockwise" (streamed)
    c.loss_block_size = 0  # blockwise: rows/cols per block (0 = the local batch)
    c.accum_steps = 1  # gradient-cache micro-batches per step (exact global-batch loss)

    c.model = ml_collections.ConfigDict()
    c.model.name = "tiny"
    c.model.open_clip_config = ""  # path to an open_clip model-config JSON (overrides name)
    # remat: a clip_jax.remat.POLICIES name (none | full | minimal | ...; plan --remat auto)
    c.model.embed_dim, c.model.scan, c.model.remat = P(int), P(bool), P(str)
    c.model.act, c.model.dtype, c.model.param_dtype = P(str), P(str), P(str)
    c.model.attention = P(str)  # "auto" (cuDNN on GPU in bf16), "xla", "xla_f32", "cudnn"
    c.model.init_logit_scale = P(float)
    c.model.init_logit_bias = P(float)
    # architecture switches (clip_jax.models.ModelConfig; the SigLIP presets set them)
    c.model.ln_eps, c.model.qk_norm, c.model.ls_init_value = P(float), P(bool), P(float)
    c.model.vision = ml_collections.ConfigDict(
        {k: P(int) for k in ("image_size", "patch_size", "width", "layers", "heads", "mlp_dim")})
    c.model.vision.patch_dropout = P(float)  # FLIP: fraction of patches dropped in training
    c.model.vision.update({k: P(bool) for k in ("class_token", "ln_pre", "patch_bias", "proj")},
                          pool=P(str))  # pool: "tok" | "map" | "gap"
    # "vit" | "resnet" (OpenAI's ModifiedResNet: width = stem width, stages = blocks per stage)
    c.model.vision.update(family=P(str), stages=P(tuple))
    # with optimizer.frozen 'image': open_clip's last K groups of the image tower stay trainable
    c.model.lock_image_unlocked_groups = P(int)
    c.model.text = ml_collections.ConfigDict(
        {k: P(int) for k in ("context_length", "vocab_size", "width", "layers", "heads",
                             "mlp_dim", "eot_id")})
    c.model.text.update(causal=P(bool), proj_bias=P(bool), pool=P(str))  # argmax|last|first
    c.model.decoder = ml_collections.ConfigDict(  # a captioning decoder: any key set adds one
        {k: P(int) for k in ("layers", "width", "heads", "mlp_dim", "pad_id", "loc_bins")})

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 5e-4
    c.optimizer.warmup_steps = 10
    c.optimizer.schedule = "cosine"
    c.optimizer.end_lr_ratio = 0.0
    c.optimizer.weight_decay = 0.2
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-6
    c.optimizer.grad_clip_norm = 1.0
    c.optimizer.decay_embeddings = False
    # regexes over parameter paths (visual/transformer/resblocks_3/attn/kernel_in) or the
    # presets 'image' / 'text': no optimizer state, no update (LiT locks 'image')
    c.optimizer.frozen = ()
    c.optimizer.lr_multipliers = ()  # ((regex, factor), ...): first match scales the update
    # layer-wise lr decay (EVA-CLIP / timm fine-tuning): block i of L scaled by d ** (L + 1 - i)
    c.optimizer.layer_decay = 1.0  # 1 = off

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # "synthetic", "webdataset", "tfds" or "mix" (both, by weight)
    c.data.demo = ""  # a directory: generate the demo corpus there if missing, train on it
    c.data.demo_variant = ""  # "" or "strip" (data/demo.py); data.train replaces the demo
    c.data.demo_train_samples = 30000
    c.data.demo_seed = 0  # the corpus's own seed: runs of any config.seed share one corpus
    c.data.train = ""  # shard spec: brace pattern, list, pipe:, fsspec URL (data issue)
    c.data.tokenizer = "train"  # a tokenizer spec (clip_bpe:, hf:, sentencepiece:, json:PATH) or
    # "train" (a BPE fitted on data.train)
    c.data.tokenizer_vocab_size = 0  # "train": 0 = the model's text.vocab_size
    c.data.shuffle_buffer = 2000
    c.data.workers = 2
    c.data.resampled = False
    c.data.image_size = P(int)  # defaults to the model's vision.image_size
    c.data.synthetic_classes = 256  # synthetic: number of latent (image, text) classes
    c.data.synthetic_noise = 0.5
    c.data.prefetch = 2  # batches placed on devices ahead of the step
    c.data.worker_mode = "process"  # data workers: "process" (spawned) or "thread"
    c.data.worker_prefetch = 2  # batches queued per worker
    c.data.jpeg_draft = True  # JPEGs decoded at a reduced DCT scale (>= 1.25x the image size)
    # A tfds image-text dataset prepared as array_record (tfds build NAME --file_format
    # array_record, elsewhere; never downloaded), read without TensorFlow (data/tfds_source.py)
    c.data.tfds_name = ""  # builder[/config][:version], e.g. "coco_captions"
    c.data.tfds_data_dir = ""  # "" = tfds's default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.tfds_split = "train"  # a tfds split expression ("train", "train+restval", "train[:90%]")
    c.data.tfds_image_key = "image"  # an Image feature
    c.data.tfds_caption_key = "captions/text"  # a Text, or a Sequence of them (one per epoch)
    c.data.tfds_weight = 1.0  # "mix": its weight beside data.train's sources (their @weights)
    # SigLIP 2 NaFlex training (data/naflex.py): each image at its own aspect ratio, a bucket
    # (patches per image, e.g. (128, 256, 576, 784, 1024)) per step from the seed and the step,
    # tokens // bucket images rounded down to a multiple of batch_multiple (0: the devices)
    c.data.naflex = ml_collections.ConfigDict(dict(buckets=(), tokens=0, batch_multiple=0))
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 0  # 0 = only at the end
    c.checkpoint.keep = 3
    c.checkpoint.keep_period = 0  # also keep every K-th step forever (0 = off)
    c.checkpoint.async_save = True
    c.checkpoint.init_from = ""  # a checkpoint dir or bundle to start from (fine-tuning)
    c.checkpoint.init_from_params = ""  # regex of the param paths taken from it ("" = all)
    # a source of another depth: its transformer blocks to take, "even" (evenly spaced, first
    # and last kept: TinyCLIP's weight inheritance) or a list such as "0,3" ("" = same depth);
    # a tower as deep as the source's is taken whole
    c.checkpoint.init_from_blocks = ""

    c.eval = ml_collections.ConfigDict()  # what every evaluation shares (see eval_sets)
    c.eval.every_steps = 0  # 0 = only at the end (if any evals are configured)
    c.eval.at_end = True
    # One dataset per kind, the short form: each set key is an evaluation named after its kind
    # (eval/zeroshot/acc1...). Datasets are clip_jax.evaluate.datasets specs: a .json card such
    # as the demo's zeroshot.json, tfds:NAME[:SPLIT], folder:PATH, or shards for retrieval.
    c.eval.zeroshot = ""
    c.eval.retrieval = ""
    c.eval.fewshot = ""  # k-shot logistic-regression probes (the CLIP paper's few-shot)
    c.eval.linear_probe = ""  # full logistic-regression probe with an L2 sweep (slow)
    c.eval.templates = ""  # "" = each dataset's own; imagenet, cifar10... or a file
    c.eval.data_dir = ""  # tensorflow-datasets data_dir
    c.eval.fewshot_shots = DEFAULT_SHOTS
    c.eval.probe_max_per_class = 0  # probes: cap on training images per class (0 = all)
    c.eval.batch_size = 256
    # Several named evaluations (big_vision's shape), logged as eval/<name>/<metric>:
    # c.evals.cifar10 = dict(kind="zeroshot", dataset="tfds:cifar10", every_steps=1000);
    # keys: EVAL_ENTRY_KEYS; templates, data_dir, shots, max_per_class default to eval.*.
    c.evals = ml_collections.ConfigDict()

    # Experiment tracking beside metrics.jsonl (the source of truth); process 0 only.
    c.logging = ml_collections.ConfigDict()
    c.logging.tensorboard = True  # event files in <workdir>/tensorboard/ (tensorboardX)
    c.logging.wandb = False  # Weights & Biases (pip install 'clip_jax[wandb]')
    c.logging.wandb_project = "clip_jax"
    c.logging.wandb_name = ""  # "" = the workdir's name
    c.logging.wandb_mode = "offline"  # "offline" (no network; `wandb sync` later) or "online"

    # Runs that cannot diverge silently (clip_jax/stability.py; README "What survives what")
    c.stability = ml_collections.ConfigDict()
    c.stability.skip_nonfinite = True  # a non-finite loss/gradient norm: the update is skipped
    c.stability.max_skips_in_a_row = 10  # that many skipped in a row: the run stops (0 = never)
    c.stability.spike_factor = 0.0  # skip if loss > factor x running mean of losses (0 = off)
    c.stability.spike_warmup_steps = 100  # no spike check up to this step
    c.stability.spike_ema_decay = 0.99  # the running mean: an EMA of the applied steps' losses
    c.stability.rollback = False  # a spike: restore the last checkpoint (PaLM) instead
    c.stability.rollback_skip_steps = 200  # ... and skip the data of that many steps after it
    c.stability.max_rollbacks = 3  # restores of one checkpoint before the run stops
    c.debug = ml_collections.ConfigDict()  # the fire drill: check the guard before a long run
    c.debug.nonfinite_steps = ()  # steps whose gradients are made NaN inside the step
    c.debug.spike_steps = ()  # steps whose loss and gradients are scaled by debug.spike_scale
    c.debug.spike_scale = 1000.0

    # Distillation from frozen teachers (clip_jax/distill.py checks these keys)
    c.distill = ml_collections.ConfigDict()
    c.distill.teachers = ()  # model sources: bundle, workdir, HF CLIP/SigLIP dir, open_clip file
    c.distill.clip_weight = 1.0  # the student's own contrastive loss
    c.distill.kd_weight = 1.0  # CE to the teachers' image<->text distributions (global batch)
    c.distill.feature_weight = 0.0  # 1 - cos to the teachers' embeddings (learned projection)
    c.distill.teacher_logit_scale = 100.0  # the teachers' logit scale (0 = each one's own)
    c.distill.combine = "probs"  # several teachers: average of "probs" (MobileCLIP) or "logits"
    c.distill.dtype = "float32"  # the teachers' params and compute: "float32" or "bfloat16"
    c.distill.embeddings = ""  # stored teacher embeddings DIR[,DIR2] (instead of teachers)
    c.caption = ml_collections.ConfigDict(config_schema.CAPTION)  # + CapPa, LocCa tasks
    c.ema = ml_collections.ConfigDict(dict(  # weight EMA (clip_jax/ema.py); decay 0 = off
        decay=0.0, every_steps=1, start_step=0, warmup_power=0.0))
    c.silc, c.tips = (ml_collections.ConfigDict(d) for d in config_schema.SELF_DISTILL)  # EMA

    c.lock()
    c.evals.unlock()  # a config file adds names; eval_sets checks every entry
    return c


def resolve_model_config(model_cfg: Mapping) -> models.ModelConfig:
    """Preset (or open_clip JSON) + the non-None overrides in ``config.model``."""
    if isinstance(model_cfg, ml_collections.ConfigDict):
        model_cfg = model_cfg.to_dict()
    path = model_cfg.get("open_clip_config", "")
    base = models.from_open_clip_config(path) if path else models.get_model_config(
        model_cfg["name"])
    overrides = {}
    for key, value in model_cfg.items():
        if key in ("name", "open_clip_config", "lock_image_unlocked_groups") or value is None:
            continue
        if isinstance(value, Mapping):
            sub = {k: v for k, v in value.items() if v is not None}
            if sub:
                overrides[key] = sub
        else:
            overrides[key] = value
    return base.replace(**overrides)


_CHOICES = {"loss": ("clip", "siglip"), "loss_impl": ("dense", "blockwise"),
            "data.source": ("synthetic", "webdataset", "tfds", "mix"),
            "data.worker_mode": ("process", "thread"), "logging.wandb_mode": ("offline", "online")}


def validate(c: ml_collections.ConfigDict) -> None:
    """Each key's declared type and range (:mod:`clip_jax.config_schema`), then the cross-key
    checks that the types alone cannot express."""
    config_schema.check(c)
    for key, choices in _CHOICES.items():
        value = c
        for part in key.split("."):
            value = value[part]
        if value not in choices:
            raise ValueError(f"config {key}={value!r}: choose one of {choices}")
    if c.logging.wandb and importlib.util.find_spec("wandb") is None:
        raise ValueError("config logging.wandb=True needs the wandb package: "
                         "pip install 'clip_jax[wandb]' (or wandb)")
    if c.data.source in ("webdataset", "mix") and not c.data.train and not c.data.demo:
        raise ValueError(f"config data.source={c.data.source!r} needs data.train (a shard spec)")
    if c.data.source in ("tfds", "mix") and not c.data.tfds_name:
        raise ValueError(f"config data.source={c.data.source!r} needs data.tfds_name (a tfds "
                         "dataset prepared as array_record, e.g. coco_captions)")
    if c.data.naflex.buckets:  # NaFlex batches: a NaFlex model, images, no gradient cache
        v = resolve_model_config(c.model).vision
        why = ("synthetic data has no images to resize" if c.data.source == "synthetic" else
               "NaFlex batches run without the gradient cache" if c.accum_steps != 1 else
               "distill.teachers see square images, not NaFlex batches" if c.distill.teachers else
               f"model.vision.family={v.family!r} takes square images, not NaFlex batches"
               if v.family != "naflex" else "")
        if why:
            raise ValueError(f"config data.naflex.buckets: {why}")
        naflex.bucket_plan(tuple(c.data.naflex.buckets), c.data.naflex.tokens, v.patch_size,
                           c.seed, 1)
    optimizer.check_settings(c.optimizer.frozen, c.optimizer.lr_multipliers,
                             c.model.lock_image_unlocked_groups)
    if c.optimizer.frozen or c.optimizer.lr_multipliers or c.optimizer.layer_decay != 1:
        optimizer.check_params(models.abstract_params(m := resolve_model_config(c.model)),
                               c.optimizer, c.model.lock_image_unlocked_groups, m)
    for key in ("init_from_params", "init_from_blocks"):
        if c.checkpoint[key] and not c.checkpoint.init_from:
            raise ValueError(f"config checkpoint.{key} needs checkpoint.init_from")
    if c.checkpoint.init_from_blocks not in ("", "even") and not re.fullmatch(
            r"\d+(,\d+)*", c.checkpoint.init_from_blocks):
        raise ValueError(f"config checkpoint.init_from_blocks={c.checkpoint.init_from_blocks!r}:"
                         " not 'even' or a comma list of block numbers such as 0,3")
    if c.checkpoint.init_from_params:
        try:
            re.compile(c.checkpoint.init_from_params)
        except re.error as e:
            raise ValueError(f"config checkpoint.init_from_params="
                             f"{c.checkpoint.init_from_params!r}: not a valid regex: {e}"
                             ) from None
    if c.loss == "siglip":
        m = resolve_model_config(c.model)
        if m.init_logit_bias is None:
            raise ValueError("config loss='siglip' needs model.init_logit_bias (e.g. -10.0)")
    stability.check_config(c)
    eval_sets(c)


# ---------------------------------------------------------------------------------------------
# Evaluations: ``evals`` (named) and the single-dataset ``eval.<kind>`` keys, as one table.

EVAL_KINDS = ("zeroshot", "retrieval", "fewshot", "linear_probe")
DEFAULT_SHOTS = (1, 2, 4, 8, 16)  # k of the few-shot probes, everywhere (config, CLI, suite)
EVAL_ENTRY_KEYS = ("kind", "dataset", "every_steps", "templates", "data_dir", "shots",
                   "max_per_class")


def _is_count(v, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def eval_sets(c: ml_collections.ConfigDict) -> dict[str, dict]:
    """``{name: entry}``, every key of :data:`EVAL_ENTRY_KEYS` filled: each ``eval.<kind>``
    that is set, named after its kind, then each entry of ``evals``; ``every_steps`` 0 and unset
    fields take the ``eval.*`` values. A bad entry is a ValueError naming it."""
    e = c.eval
    if not _is_count(e.every_steps, 0):
        raise ValueError(f"config eval.every_steps={e.every_steps!r} must be an integer >= 0")
    shared = {"every_steps": e.every_steps, "templates": e.templates, "data_dir": e.data_dir,
              "shots": tuple(e.fewshot_shots), "max_per_class": e.probe_max_per_class}
    out = {k: {**shared, "kind": k, "dataset": e[k]} for k in EVAL_KINDS if e[k]}
    for name, entry in c.get("evals", {}).items():
        where = f"config evals.{name}"
        if not (name.isascii() and name[:1].isalnum()
                and name.replace("_", "").replace("-", "").replace(".", "").isalnum()):
            raise ValueError(f"{where}: an evaluation's name is letters, digits, '_', '-', '.' "
                             "(it names metrics and report files)")
        if name in out:
            raise ValueError(f"{where} and eval.{name} both define the evaluation {name!r}: "
                             f"keep one (or rename evals.{name})")
        entry = entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else entry
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}={entry!r}: expected a dict such as "
                             "{'kind': 'zeroshot', 'dataset': 'tfds:cifar10'}")
        unknown = sorted(set(entry) - set(EVAL_ENTRY_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; an entry takes "
                             f"{list(EVAL_ENTRY_KEYS)}")
        if entry.get("kind") not in EVAL_KINDS:
            raise ValueError(f"{where}.kind={entry.get('kind')!r}: choose one of {EVAL_KINDS}")
        dataset = entry.get("dataset")
        if not isinstance(dataset, str) or not dataset.strip():
            raise ValueError(f"{where}.dataset is missing: give a dataset spec (a .json card, "
                             "tfds:NAME[:SPLIT], folder:PATH, or shards for retrieval)")
        if not _is_count(entry.get("every_steps", 0), 0):
            raise ValueError(f"{where}.every_steps={entry['every_steps']!r} must be an integer "
                             ">= 0 (0 = eval.every_steps)")
        shots = entry.get("shots", shared["shots"])
        if not isinstance(shots, list | tuple) or not all(_is_count(k, 1) for k in shots):
            raise ValueError(f"{where}.shots={shots!r} must be a list of positive integers")
        if not _is_count(entry.get("max_per_class", 0), 0):
            raise ValueError(f"{where}.max_per_class={entry['max_per_class']!r} must be an "
                             "integer >= 0 (0 = all)")
        for key in ("templates", "data_dir"):
            if not isinstance(entry.get(key, ""), str):
                raise ValueError(f"{where}.{key}={entry[key]!r} must be a string")
        out[name] = {**shared, **entry, "shots": tuple(shots),
                     "every_steps": entry.get("every_steps") or e.every_steps}
    return out


# ---------------------------------------------------------------------------------------------
# Resuming: which config changes a saved run can take.

# Keys whose change alters the saved train state's structure or shapes (or how the saved data
# iterator/tokenizer state is read), so a resume under them cannot restore what was saved.
# ``model.*`` counts as a whole, except compute-only keys.
_RESUME_SAFE_MODEL_KEYS = {"model.remat", "model.dtype", "model.vision.patch_dropout"}
_RESUME_REFUSED_KEYS = {"loss", "data.source", "data.tokenizer", "data.tokenizer_vocab_size"}


def _flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _as_plain(config) -> dict:
    """A config as the JSON-able dict that ``config.json`` holds (tuples become lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config))


def config_diff(saved, requested) -> list[tuple[str, object, object]]:
    """``(key, saved value, requested value)`` for every key that differs, sorted by key."""
    a, b = _flatten(_as_plain(saved)), _flatten(_as_plain(requested))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _changes_state(key: str, old, new) -> bool:
    if key.startswith("model."):
        return key not in _RESUME_SAFE_MODEL_KEYS
    if key == "optimizer.grad_clip_norm":  # clipping on/off adds or removes a state entry
        return bool(old and old > 0) != bool(new and new > 0)
    if key == "optimizer.frozen":  # frozen parameters have no optimizer state
        return list(old or []) != list(new or [])
    return key in _RESUME_REFUSED_KEYS


def format_diff(diff) -> str:
    return ", ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in diff)


def _short(v) -> str:
    return "unset" if v is None else (v if isinstance(v, str) and v else repr(v))


class ResumeConfigError(UserError):
    """The requested config cannot resume the saved run."""


def check_resume(saved, requested, workdir: str = "") -> list[tuple[str, object, object]]:
    """Compare the config a run is resumed with against the one it was saved with. Raise
    :class:`ResumeConfigError` (one line: the offending keys as ``key: old -> new``) if a change
    alters the saved state's shapes (model, loss type, optimizer structure, data source or
    tokenizer); return the other, safe, changes (steps, schedule, logging, eval, data paths,
    mesh, batch...), which the caller records. A teacher in the student's own workdir (it
    would move as the student trains: each restart another teacher) is refused."""
    home = os.path.realpath(workdir) if workdir else None
    for t in ((requested.get("distill") or {}).get("teachers") or ()) if home else ():
        if os.path.commonpath([home, os.path.realpath(t)]) == home:
            raise ResumeConfigError(f"config distill.teachers: {t} is the student's own workdir "
                                    f"{workdir} (or inside it), a teacher that moves as the "
                                    "student trains: give a fixed teacher (a bundle, another "
                                    "run's workdir)")
    diff = config_diff(saved, requested)
    refused = [d for d in diff if _changes_state(*d)]
    if refused:
        where = f" {workdir}" if workdir else ""
        raise ResumeConfigError(
            f"cannot resume{where} with a config that changes the saved train state: "
            f"{format_diff(refused)} (use a new workdir; checkpoint.init_from can start it from "
            f"this run's weights)")
    return diff


# ---------------------------------------------------------------------------------------------
# The command line: ``--config FILE[:ARG] --workdir DIR [--config.key=value ...] [--verbose]``


HELP_FLAGS = ("-h", "--help", "--helpfull")


def parse_flags(argv: list[str], usage: str = ""):
    """``(config, workdir)`` from the command line, or a :class:`clip_jax.cli.UserError` in one
    line (a mistyped key, a bad value, a missing or broken config file). ``--help`` prints
    ``usage`` and the flags, and exits."""
    if "config" not in flags.FLAGS:
        _define_flags()
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(f"{usage.strip()}\n{flags.FLAGS.module_help(__name__)}\n"
              "  --config.KEY=VALUE: override any key of the config (clip_jax.config)")
        raise SystemExit(0)
    try:
        flags.FLAGS(argv)
    except Exception as e:  # absl raises KeyError/AttributeError for a mistyped key
        what = "unknown config key" if isinstance(e, KeyError | AttributeError) else \
            "command line"
        raise cli.UserError(f"{what}: {cli.one_line(e)}") from None
    config = flags.FLAGS.config
    if not isinstance(config, ml_collections.ConfigDict):  # absl keeps the load error inside
        path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
        if not os.path.isfile(path):
            raise cli.UserError(f"--config {path}: no such file")
        error = object.__getattribute__(config, "_error")
        cause = error.__cause__ or error
        raise cli.UserError(f"--config {path} could not be loaded: "
                            f"{cli.one_line(cause)}") from None
    return config, flags.FLAGS.workdir


def _define_flags():
    config_flags.DEFINE_config_file("config", None, "Path to a config file with get_config().",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
    flags.DEFINE_bool("verbose", False, "Print the full traceback on errors.")
    flags.mark_flags_as_required(["config", "workdir"])
