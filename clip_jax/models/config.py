"""Model configuration: :class:`ModelConfig` with its vision and text sub-configs, the named
validation of the architecture switches (each tower family checks its own: ``Family.check`` in
its module, :mod:`clip_jax.models.family`). Presets are in :mod:`clip_jax.models.presets`,
open_clip's model-config JSON in :mod:`clip_jax.models.openclip_config`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import clip_jax.models.family as families
from clip_jax import remat as remat_lib

# CLIP's initial temperature is 1/0.07, its log (2.6592) the initial logit_scale parameter.
INIT_LOGIT_SCALE = math.log(1 / 0.07)


ACTS = ("gelu", "gelu_tanh", "quick_gelu")
VISION_POOLS = ("tok", "map", "gap")
TEXT_POOLS = ("argmax", "last", "first")
DECODER_INPUTS = ("embed", "text")
# fields whose default a saved config omits (the dict a model without them always had)
_OMITTED = {"vision": {"attn_pooler_queries": 0, "attn_pooler_heads": 8},
            "text": {"embed_cls": False, "pad_id": 0, "family": "transformer", "hf": None},
            "decoder": {"input": "embed"}}


def _positive_int(where: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}={value!r}: must be a positive integer")


def _flag(where: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{where}={value!r}: must be true or false")


def _choice(where: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{where}={value!r}: must be one of {', '.join(choices)}")


def _heads(where: str, width: int, heads: int) -> None:
    if width % heads:
        raise ValueError(f"{where}.heads={heads}: must divide {where}.width={width}")


def check_stages(v) -> None:
    """A tower of four stages of blocks (``vision.stages``) and output stride 32 (ResNet,
    ConvNeXt): the switches they share."""
    st = v.stages
    if (not isinstance(st, tuple) or len(st) != 4 or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in st)):
        raise ValueError(f"model.vision.stages={st!r}: a {v.family} tower needs four "
                         "positive block counts, e.g. [3, 4, 6, 3]")
    for name in ("image_size", "width", "heads"):
        _positive_int(f"model.vision.{name}", getattr(v, name))
    if v.width % 2:
        raise ValueError(f"model.vision.width={v.width}: a ResNet's stem width must be even")
    if v.image_size % 32:
        raise ValueError(f"model.vision.image_size={v.image_size}: a {v.family} "
                         "tower needs a multiple of 32 (its output stride)")
    if v.patch_dropout:
        raise ValueError(f"model.vision.patch_dropout: a {v.family} tower has no "
                         "patches to drop")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    patch_dropout: float = 0.0  # FLIP: fraction of patch tokens dropped in training (CLS kept)
    class_token: bool = True  # a learned class token prepended to the patch tokens
    ln_pre: bool = True  # LayerNorm before the blocks
    patch_bias: bool = False  # bias of the patch embedding (SigLIP)
    pool: str = "tok"  # "tok" (token 0) | "map" (attention pooling, SigLIP) | "gap" (mean)
    proj: bool = True  # image projection width -> embed_dim; False: embed_dim == width
    act: str | None = None  # this tower's activation; None: model.act
    # a registered family (models/family.py): "vit" | "resnet": OpenAI's ModifiedResNet
    # (models/resnet.py; width = the stem's width,
    # heads = the attention pool's, stages = blocks per stage, open_clip's ``layers`` list) |
    # "convnext": timm's ConvNeXt as open_clip wraps it (models/convnext.py) | "naflex": SigLIP 2's
    # ViT at each image's own aspect ratio (models/naflex.py; position table image_size/patch_size
    # squared, no class token, no patch dropout)
    family: str = "vit"
    stages: tuple[int, ...] | None = None
    # ConvNeXt (family "convnext", open_clip's timm trunk; width = the first stage's channels):
    norm_eps: float | None = None  # its LayerNorm eps; None: model.ln_eps
    proj_type: str = "linear"  # open_clip's timm_proj: linear | mlp
    drop_path: float = 0.0  # stochastic depth in training (timm_drop_path), linear in depth
    # open_clip CoCa's attentional pooler (ViT only): this many learned queries (0: none) attend
    # to the tower's tokens with attn_pooler_heads heads, giving (B, queries, embed_dim); ln_post
    # then pool (tok: query 0; gap: the mean of the others) and proj (embed_dim, embed_dim)
    attn_pooler_queries: int = 0
    attn_pooler_heads: int = 8

    def __post_init__(self):
        fam = families.get("vision", self.family)  # a one-line error naming the families
        if isinstance(self.stages, list):
            object.__setattr__(self, "stages", tuple(self.stages))  # hashable (JSON: a list)
        fam.check(self)

    def patches(self) -> int:
        """Patch tokens per image."""
        return (self.image_size // self.patch_size) ** 2

    def kept_patches(self) -> int:
        """Patch tokens kept per image in training: ``round((1 - p) * n)``, at least one."""
        n = self.patches()
        return n if not self.patch_dropout else max(1, round((1 - self.patch_dropout) * n))


@dataclasses.dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    causal: bool = True  # False: bidirectional attention, no mask (SigLIP)
    # "argmax": at the end token (the first position of eot_id; with eot_id None the position of
    # the largest id, open_clip's "argmax", which is CLIP BPE's end token) | "last" | "first"
    pool: str = "argmax"
    eot_id: int | None = None
    proj_bias: bool = False  # bias of the text projection (SigLIP's text head)
    act: str | None = None  # this tower's activation; None: model.act
    # open_clip CoCa's text tower: a learned class token appended after the text (the position
    # table one longer), pooled after ln_final (text.pool unread), keys equal to pad_id masked
    # (as open_clip's CoCa masks them: shifted one position right, its legacy mask)
    embed_cls: bool = False
    pad_id: int = 0
    family: str = "transformer"  # a registered text family (models/family.py)
    # family "hf" (models/hf_text.py): a Hugging Face encoder's own switches (its model type,
    # open_clip's pooler and projection...), a dict its family's check turns into its dataclass
    hf: Any = None

    def __post_init__(self):
        families.get("text", self.family).check(self)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """A captioning decoder on the image tower's un-pooled tokens (:mod:`clip_jax.models.decoder`;
    open_clip CoCa's ``multimodal_cfg``, big_vision CapPa's decoder). Its vocabulary and context
    are the text tower's; ``pad_id``: the token id ignored as a caption target."""

    layers: int = 12
    width: int = 512
    heads: int = 8
    mlp_dim: int = 2048
    pad_id: int = 0
    # "embed": its own token/position/mask embeddings (CapPa); "text": open_clip CoCa's wiring,
    # the text tower's un-pooled token outputs are its input and it cross-attends to the image
    # tokens after the pooled one (CoCa's ``tokens``); no CapPa parallel prediction
    input: str = "embed"
    # LocCa (clip_jax.models.locca): > 0 appends 3 task tokens and this many coordinate bins
    # to its vocabulary (its embeddings and logits), after the text tower's ids
    loc_bins: int = 0

    def __post_init__(self):
        for name in ("layers", "width", "heads", "mlp_dim"):
            _positive_int(f"model.decoder.{name}", getattr(self, name))
        _choice("model.decoder.input", self.input, DECODER_INPUTS)
        b = self.loc_bins
        if isinstance(b, bool) or not isinstance(b, int) or b < 0 or (b and self.input != "embed"):
            raise ValueError(f"model.decoder.loc_bins={b!r}: must be an integer >= 0, and 0 "
                             "with model.decoder.input='text' (its inputs are text tokens)")
        p = self.pad_id
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"model.decoder.pad_id={p!r}: must be a token id >= 0")
        _heads("model.decoder", self.width, self.heads)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    embed_dim: int = 512
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    # "gelu" (exact erf, as torch.nn.GELU) | "gelu_tanh" (SigLIP) | "quick_gelu" (OpenAI weights)
    act: str = "gelu"
    ln_eps: float = 1e-5
    init_logit_scale: float = INIT_LOGIT_SCALE
    init_logit_bias: float | None = None  # a float adds a learned logit_bias (sigmoid loss)
    dtype: str = "float32"  # compute dtype, e.g. "bfloat16"
    param_dtype: str = "float32"
    remat: str = "none"  # a clip_jax.remat.POLICIES name (true/false: full/none)
    scan: bool = False  # nn.scan over blocks: compile time independent of depth
    attention: str = "auto"  # "auto" | "xla" | "xla_f32" | "cudnn": see clip_jax.layers.attention
    qk_norm: bool = False  # LayerNorm over head_dim on queries and keys (both towers)
    ls_init_value: float | None = None  # layer scale of each residual branch (both towers)
    decoder: DecoderConfig | None = None  # a captioning decoder (CoCa / CapPa); None: none

    def __post_init__(self):
        _positive_int("model.embed_dim", self.embed_dim)
        object.__setattr__(self, "remat", remat_lib.remat_name(self.remat))
        _choice("model.act", self.act, ACTS)
        _flag("model.qk_norm", self.qk_norm)
        eps = self.ln_eps
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
            raise ValueError(f"model.ln_eps={eps!r}: must be a number in (0, 1)")
        ls = self.ls_init_value
        if ls is not None and (isinstance(ls, bool) or not isinstance(ls, int | float)
                               or not math.isfinite(ls)):
            raise ValueError(f"model.ls_init_value={ls!r}: must be null or a finite number")
        for name in ("init_logit_scale", "init_logit_bias"):
            x = getattr(self, name)
            if (x is not None or name == "init_logit_scale") and (
                    isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x)):
                raise ValueError(f"model.{name}={x!r}: must be a finite number")
        fam = families.vision(self)
        if self.decoder is not None and not fam.tokens:
            raise ValueError(f"model.decoder: cross-attends to a ViT's tokens; model.vision."
                             f"family={self.vision.family!r} has none")
        for f in (fam, families.text(self)):
            if f.check_model is not None:
                f.check_model(self)
        if (self.decoder is not None and self.decoder.input == "text"
                and self.decoder.width != self.text.width):
            raise ValueError(f"model.decoder.input='text': the decoder reads the text tower's "
                             f"tokens, so model.decoder.width={self.decoder.width} must equal "
                             f"model.text.width={self.text.width}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["decoder"] is None:  # a model without a decoder: the dict it always had
            del d["decoder"]
        for sub, defaults in _OMITTED.items():
            for k, v in defaults.items():
                if sub in d and d[sub][k] == v:
                    del d[sub][k]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - known
        if bad:
            raise ValueError(f"unknown model config keys {sorted(bad)}; known: {sorted(known)}")
        vision = _sub_from_dict(VisionConfig, d.pop("vision", {}) or {}, "vision")
        text = _sub_from_dict(TextConfig, d.pop("text", {}) or {}, "text")
        dec = d.pop("decoder", None)
        dec = None if dec is None else _sub_from_dict(DecoderConfig, dec, "decoder")
        return cls(vision=vision, text=text, decoder=dec, **d)

    def replace(self, **overrides) -> ModelConfig:
        """Override fields; ``vision``/``text``/``decoder`` take dicts of their own fields (a
        decoder dict on a model without one starts from :class:`DecoderConfig`'s defaults)."""
        overrides = dict(overrides)
        for name, sub in (("vision", self.vision), ("text", self.text),
                          ("decoder", self.decoder or DecoderConfig())):
            if isinstance(overrides.get(name), Mapping):
                overrides[name] = _sub_from_dict(type(sub), overrides[name], name, base=sub)
        return dataclasses.replace(self, **overrides)


def _sub_from_dict(cls, d: Mapping[str, Any], where: str, base=None):
    known = {f.name for f in dataclasses.fields(cls)}
    bad = set(d) - known
    if bad:
        raise ValueError(f"unknown model.{where} keys {sorted(bad)}; known: {sorted(known)}")
    return dataclasses.replace(base, **d) if base is not None else cls(**d)
