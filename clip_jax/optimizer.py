"""AdamW with CLIP's defaults, warmup + cosine schedule, global-norm clipping; frozen parameters
and per-parameter learning-rate multipliers.

Weight decay applies to matrices only: biases, LayerNorm scales/shifts, the class token and the
logit scale/bias are never decayed (nor layer-scale gammas, the MAP head's probe and the
text projection's bias). The mask works on names, so it is the same whether blocks
are scanned (stacked with a leading layer axis) or not. Token and position embeddings are not
decayed either unless ``decay_embeddings`` is set (open_clip excludes them too).

Parameters are named by their ``/``-joined paths (``visual/transformer/resblocks_3/attn/
kernel_in``, as :func:`clip_jax.params.flatten_params` gives them):

* ``optimizer.frozen``: regexes (``re.search``) or the presets ``image`` / ``text`` (a whole
  tower; LiT locks ``image``). Frozen parameters get no optimizer state at all (``optax.
  multi_transform`` with ``set_to_zero``: no Adam moments, no weight decay), their gradient is
  never computed (:func:`stop_frozen`) and they do not change. With ``image`` frozen,
  ``model.lock_image_unlocked_groups=K`` keeps open_clip's last K groups of the image tower
  trainable; the groups are ``[conv1, class_embedding, positional_embedding, ln_pre]``,
  ``resblocks_0`` .. ``resblocks_{L-2}``, ``[resblocks_{L-1}, ln_post, map_head]``, ``[proj]``
  (K=1: ``proj`` only; K=2: also the last block and ``ln_post``; a tower without ``proj``,
  SigLIP's, has no last group).
* ``optimizer.lr_multipliers``: ``(regex, factor)`` pairs, big_vision style: the first match
  scales the parameter's whole AdamW update (its learning rate, weight decay included); no match
  is 1. Stateless: the optimizer state is the same with or without them.

* ``optimizer.layer_decay``: layer-wise learning-rate decay (BEiT, EVA-CLIP's fine-tuning, timm's
  ``param_groups_layer_decay``), 1 = off. Each tower family's module says which parameter is at
  which depth (``Family.layer_id``, :mod:`clip_jax.models.family`); for the transformer towers
  (ViT, NaFlex, text) of depth L the embeddings
  (patch/token and position embeddings, class token, ``ln_pre``) are layer 0, block i is layer
  i + 1, the final norm (``ln_post``, ``ln_final``) shares the last block's layer L as in timm's
  ViT grouping, and the pooling head and projection are layer L + 1; a parameter's update is
  scaled by ``layer_decay ** (L + 1 - layer)`` (times its multiplier).
  Parameters outside the towers (the logit scale and bias, an objective's heads) keep 1. A
  scanned tower's stacked blocks get one factor per block along their leading axis. A family
  without layer ids (ResNet) is a one-line error; ConvNeXt's are timm's (stem 0, each block in
  order, a downsample with its stage's first block, head L + 1). Stateless, like the multipliers.

A pattern that matches no parameter is an error (a typo would otherwise freeze nothing).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clip_jax.models import family as families

# Biases and norms (incl. q_norm/k_norm), layer-scale gammas, the class token and the MAP probe
# (a learned token), the logit parameters.
_NO_DECAY_LEAVES = {"bias", "scale", "logit_scale", "logit_bias", "class_embedding", "gamma",
                    "probe", "text_projection_bias"}
_EMBEDDINGS = {"token_embedding", "positional_embedding"}
FROZEN_PRESETS = {"image": r"^visual/", "text": r"^text/"}
_STACKED_VISION = re.compile(r"^visual/transformer/resblocks/")
_VISION_BLOCK = re.compile(r"^visual/transformer/resblocks_(\d+)/")
TRAINABLE, FROZEN = "trainable", "frozen"


def _path(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _paths(params) -> list[str]:
    return [_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]


def decay_mask(params, decay_embeddings: bool = False):
    def keep(path, _):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1] in _NO_DECAY_LEAVES:
            return False
        return decay_embeddings or keys[-1] not in _EMBEDDINGS

    return jax.tree_util.tree_map_with_path(keep, params)


def _compile(pattern, where: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{where}={pattern!r}: must be a non-empty regex string")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{where}={pattern!r} is not a valid regex: {e}") from None


def _no_match(where: str, pattern: str, paths: Sequence[str]) -> ValueError:
    hint = ""
    if "resblocks_" in pattern and any("/resblocks/" in p for p in paths):
        hint = (" (model.scan=True stacks each tower's blocks into one 'transformer/resblocks' "
                "parameter: single blocks cannot be named; set model.scan=False)")
    return ValueError(f"{where}={pattern!r} matches no parameter{hint}; parameters look like "
                      f"{', '.join(paths[:3])} ...")


def check_settings(frozen, lr_multipliers, unlocked_image_groups=None) -> None:
    """The types and regexes of ``optimizer.frozen`` / ``optimizer.lr_multipliers`` /
    ``model.lock_image_unlocked_groups``, without parameters (see :func:`frozen_patterns`)."""
    if isinstance(frozen, str) or not isinstance(frozen, Sequence):
        raise ValueError(f"optimizer.frozen={frozen!r}: must be a list of regexes or presets "
                         f"({', '.join(FROZEN_PRESETS)})")
    for i, pattern in enumerate(frozen):
        _compile(pattern, f"optimizer.frozen[{i}]")
    if isinstance(lr_multipliers, str) or not isinstance(lr_multipliers, Sequence):
        raise ValueError(f"optimizer.lr_multipliers={lr_multipliers!r}: must be a list of "
                         "(regex, factor) pairs")
    for i, item in enumerate(lr_multipliers):
        where = f"optimizer.lr_multipliers[{i}]"
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            raise ValueError(f"{where}={item!r}: must be a (regex, factor) pair")
        _compile(item[0], where)
        f = item[1]
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f < float("inf"):
            raise ValueError(f"{where}={item!r}: the factor must be a finite number >= 0")
    k = unlocked_image_groups or 0
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"model.lock_image_unlocked_groups={k!r}: must be an integer >= 0")
    if k and "image" not in frozen:
        raise ValueError(f"model.lock_image_unlocked_groups={k} applies to a locked image "
                         "tower: add 'image' to optimizer.frozen")


def _image_groups(paths: Sequence[str], unlocked: int) -> list[str]:
    """Patterns of the image tower's open_clip groups that stay frozen when the last
    ``unlocked`` groups are trainable (see the module docstring)."""
    if any(_STACKED_VISION.match(p) for p in paths):
        raise ValueError(f"model.lock_image_unlocked_groups={unlocked} cannot unlock single "
                         "blocks of a scanned tower (model.scan=True stacks its blocks into one "
                         "parameter); set model.scan=False")
    if any(p.startswith(("visual/attnpool/", "visual/stem_0/")) for p in paths):
        raise ValueError(f"model.lock_image_unlocked_groups={unlocked}: a ResNet or ConvNeXt "
                         "image tower is locked whole here (open_clip's ModifiedResNet.lock "
                         "allows nothing else); set it to 0")
    layers = 1 + max((int(m[1]) for p in paths if (m := _VISION_BLOCK.match(p))), default=-1)
    groups = [r"^visual/(conv1|class_embedding|positional_embedding|ln_pre)(/|$)"]
    groups += [rf"^visual/transformer/resblocks_{i}/" for i in range(layers - 1)]
    groups += [rf"^visual/(transformer/resblocks_{layers - 1}|ln_post|map_head)/"]
    if "visual/proj" in paths:  # SigLIP's tower has none (model.vision.proj=false)
        groups.append(r"^visual/proj$")
    if unlocked >= len(groups):
        raise ValueError(f"model.lock_image_unlocked_groups={unlocked} unlocks all "
                         f"{len(groups)} groups of the image tower: nothing would be frozen; "
                         "drop 'image' from optimizer.frozen instead")
    return groups[:len(groups) - unlocked]


def frozen_patterns(frozen: Sequence[str], paths: Sequence[str],
                    unlocked_image_groups: int | None = None) -> list[str]:
    """``optimizer.frozen`` with the presets expanded, checked against the parameter ``paths``:
    a ValueError names a pattern that matches nothing."""
    check_settings(frozen, (), unlocked_image_groups)
    out = []
    for i, pattern in enumerate(frozen):
        if pattern == "image" and unlocked_image_groups:
            out += _image_groups(paths, unlocked_image_groups)
            continue
        pattern = FROZEN_PRESETS.get(pattern, pattern)
        rx = _compile(pattern, f"optimizer.frozen[{i}]")
        if not any(rx.search(p) for p in paths):
            raise _no_match(f"optimizer.frozen[{i}]", frozen[i], paths)
        out.append(pattern)
    return out


def frozen_mask(params, frozen: Sequence[str], unlocked_image_groups: int | None = None):
    """A tree like ``params``: True where the parameter is frozen."""
    rxs = [re.compile(p) for p in frozen_patterns(frozen, _paths(params), unlocked_image_groups)]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(rx.search(_path(path)) for rx in rxs), params)


def lr_factors(params, lr_multipliers, check: bool = True) -> dict:
    """A tree like ``params`` of Python floats: the factor of the first matching pair, else 1;
    with ``check``, a pair that matches no parameter is a ValueError."""
    check_settings((), lr_multipliers)
    paths = _paths(params)
    pairs = []
    for i, (pattern, factor) in enumerate(lr_multipliers):
        rx = _compile(pattern, f"optimizer.lr_multipliers[{i}]")
        if check and not any(rx.search(p) for p in paths):
            raise _no_match(f"optimizer.lr_multipliers[{i}]", pattern, paths)
        pairs.append((rx, float(factor)))

    def factor(path, _):
        p = _path(path)
        return next((f for rx, f in pairs if rx.search(p)), 1.0)

    return jax.tree_util.tree_map_with_path(factor, params)


def check_params(params, opt_cfg, unlocked_image_groups: int | None = None,
                 model_cfg=None) -> None:
    """Every frozen pattern and multiplier names parameters of ``params`` (abstract is fine)
    and something is left to train, and ``optimizer.layer_decay`` finds every tower
    parameter's layer; a ValueError names the problem."""
    lr_factors(params, opt_cfg.lr_multipliers)
    if check_layer_decay(opt_cfg.get("layer_decay", 1.0)) != 1.0:
        layer_decay_factors(params, opt_cfg.layer_decay, model_cfg)
    if opt_cfg.frozen and all(jax.tree.leaves(
            frozen_mask(params, opt_cfg.frozen, unlocked_image_groups))):
        raise ValueError(f"optimizer.frozen={list(opt_cfg.frozen)} freezes every parameter: "
                         "nothing would train")


def stop_frozen(params, opt_cfg, unlocked_image_groups: int | None = None):
    """``params`` with the frozen ones behind ``stop_gradient``: their gradient is zero and XLA
    drops the backward work that only they need (a locked tower's whole backward pass)."""
    if not opt_cfg.frozen:
        return params
    mask = frozen_mask(params, opt_cfg.frozen, unlocked_image_groups)
    return jax.tree.map(lambda x, f: jax.lax.stop_gradient(x) if f else x, params, mask)


def scale_by_factors(tx: optax.GradientTransformation, lr_multipliers):
    """``tx`` with each parameter's update multiplied by its factor (:func:`lr_factors`); same
    state as ``tx``, so adding or changing multipliers keeps a run resumable."""
    if not lr_multipliers:
        return tx

    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)
        factors = lr_factors(updates, lr_multipliers, check=False)  # frozen ones are gone
        return jax.tree.map(lambda u, f: u if f == 1.0 else u * jnp.asarray(f, u.dtype),
                            updates, factors), state

    return optax.GradientTransformation(tx.init, update)


def check_layer_decay(decay) -> float:
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1:
        raise ValueError(f"optimizer.layer_decay={decay!r}: must be in (0, 1] (1 = off)")
    return float(decay)


_TOWERS = {"visual": "vision", "text": "text"}  # the CLIP module's tower -> config section


def layer_ids(shapes: Mapping[str, tuple[int, ...]], model_cfg) -> dict[str, tuple[object, int]]:
    """``{path: (layer id, the tower's L + 1)}`` for every parameter of a tower, each tower's
    ids its family's own (``Family.layer_id``; a stacked block's id is an array over its leading
    axis); parameters outside the towers are absent. A ValueError names a family without layer
    ids or a tower parameter of no layer."""
    out = {}
    for path, shape in shapes.items():
        root, _, rest = path.partition("/")
        if root not in _TOWERS:
            continue
        fam = families.get(_TOWERS[root], getattr(model_cfg, _TOWERS[root]).family)
        if fam.layer_id is None:
            raise ValueError(f"optimizer.layer_decay: the {fam.name} {_TOWERS[root]} tower "
                             f"defines no layer ids ({path}); scale it with "
                             "optimizer.lr_multipliers instead")
        layer = fam.layer_id(model_cfg, rest, shape)
        if layer is None:
            raise ValueError(f"optimizer.layer_decay: {path} belongs to no layer of the "
                             f"{fam.name} {_TOWERS[root]} tower (embeddings, blocks, final norm "
                             "or head)")
        out[path] = (layer, fam.depth(model_cfg) + 1)
    return out


def layer_decay_factors(params, decay: float, model_cfg):
    """A tree like ``params`` (arrays or abstract): each parameter's layer-decay factor
    ``decay ** (L + 1 - layer)``, a float or, for a scanned tower's stacked blocks, an array
    broadcasting along the leading axis (:func:`layer_ids`); 1 outside the towers."""
    decay = check_layer_decay(decay)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    ids = layer_ids({_path(p): tuple(np.shape(x)) for p, x in leaves}, model_cfg)

    def factor(path, x):
        layer, last = ids.get(_path(path), (None, None))
        if layer is None:
            return 1.0
        f = decay ** (last - np.asarray(layer, np.float64))
        if f.ndim:
            return f.astype(np.float32).reshape((-1,) + (1,) * (np.ndim(x) - 1))
        return float(f)

    return jax.tree_util.tree_map_with_path(factor, params)


def scale_by_layer_decay(tx: optax.GradientTransformation, decay: float, model_cfg=None):
    """``tx`` with each parameter's update scaled by its :func:`layer_decay_factors` (the
    tree is the whole model's, so a frozen block does not shift the depth); same state."""
    decay = check_layer_decay(decay)
    if decay == 1.0:
        return tx
    if model_cfg is None:
        raise ValueError("optimizer.layer_decay needs the model config (its families' layer "
                         "ids): make_optimizer(..., model_cfg=...)")

    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)
        factors = layer_decay_factors(updates, decay, model_cfg)
        return jax.tree.map(lambda u, f: u if np.all(np.asarray(f) == 1.0)
                            else u * jnp.asarray(f, u.dtype), updates, factors), state

    return optax.GradientTransformation(tx.init, update)


def make_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
    warmup = int(opt_cfg.warmup_steps)
    if warmup >= total_steps:
        return optax.linear_schedule(0.0, opt_cfg.lr, max(warmup, 1))
    if opt_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, opt_cfg.lr, warmup, total_steps, end_value=opt_cfg.lr * opt_cfg.end_lr_ratio)
    if opt_cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, opt_cfg.lr, max(warmup, 1)),
             optax.constant_schedule(opt_cfg.lr)], [warmup])
    raise ValueError(f"optimizer.schedule={opt_cfg.schedule!r}: use 'cosine' or 'constant'")


def make_optimizer(opt_cfg, total_steps: int, unlocked_image_groups: int | None = None,
                   model_cfg=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule). Without frozen parameters: clipping + AdamW (+ multipliers);
    with them, that chain runs on the trainable parameters only (its global norm included)
    inside ``optax.multi_transform``, and the frozen ones get ``set_to_zero`` and no state.
    ``model_cfg``: the model's config, whose families give ``optimizer.layer_decay`` its layer
    ids (needed only with layer decay)."""
    schedule = make_schedule(opt_cfg, total_steps)
    parts = []
    if opt_cfg.grad_clip_norm and opt_cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
    parts.append(optax.adamw(
        schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
        mask=lambda p: decay_mask(p, opt_cfg.decay_embeddings)))
    frozen, mults = tuple(opt_cfg.get("frozen", ())), tuple(opt_cfg.get("lr_multipliers", ()))
    check_settings(frozen, mults, unlocked_image_groups)
    decay = check_layer_decay(opt_cfg.get("layer_decay", 1.0))
    tx = scale_by_factors(optax.chain(*parts), mults)
    if not frozen:
        return scale_by_layer_decay(tx, decay, model_cfg), schedule

    def labels(params):
        if not isinstance(params, Mapping):  # optax.tree_utils.tree_map_params' placeholder
            return TRAINABLE  # (sharding.opt_state_specs): the state's param-shaped trees
        mask = frozen_mask(params, frozen, unlocked_image_groups)
        return jax.tree.map(lambda f: FROZEN if f else TRAINABLE, mask)

    return scale_by_layer_decay(  # outside: it sees every parameter, frozen ones as zeros
        optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels),
        decay, model_cfg), schedule
