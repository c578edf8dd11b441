"""Each objective term's share of a compiled train step (``python -m clip_jax.plan --terms``).

A multi-term recipe (configs/siglip2_b16.py: the sigmoid loss, LocCa's decoder, SILC and TIPS
from the EMA teacher) is compiled once as configured (with self-distillation, the switched-on
program: the batch carries the views) and once per term with that term switched off, everything
else the same; a term's share is what removing it saves, against the whole step:

    share(term) = 1 - figure(step without the term) / figure(whole step)

for the HBM per chip (the compiled program's memory) and the FLOPs per chip (XLA's count of the
whole step, :func:`clip_jax.compiled.step_cost`, when the plan counts FLOPs). The base,
"contrastive", is the step with every other term off (and no EMA teacher when only the
self-distillation terms needed it): its figure over the whole step's. The marginal shares and
the base need not add to 1: what the terms share (the EMA copy of the params that SILC and TIPS
both read, the image forward the decoder and the contrastive loss share) is counted in none or
in several; the remainder is reported as ``shared``.
"""

from __future__ import annotations

from collections.abc import Callable

from clip_jax import compiled
from clip_jax import config as config_lib

DECODER_KEYS = ("layers", "width", "heads", "mlp_dim", "pad_id", "loc_bins")


def _decoder_on(config) -> bool:
    m = config_lib.resolve_model_config(config.model)
    return m.decoder is not None and float(config.caption.weight) > 0


def _no_decoder(config) -> dict:
    return {**{f"model__decoder__{k}": None for k in DECODER_KEYS}, "caption__weight": 0.0}


def ablations(config) -> dict[str, dict]:
    """``{term: config overrides switching it off}`` of the terms ``config`` trains, and
    ``contrastive``: every other term off."""
    out = {}
    if _decoder_on(config):
        out["decoder"] = _no_decoder(config)
    for name in ("silc", "tips"):
        if float(config[name].weight) > 0:
            out[name] = {f"{name}__weight": 0.0}
    if not out:
        return {}
    base = {k: v for off in out.values() for k, v in off.items()}
    if "silc" in out or "tips" in out:  # their EMA teacher goes with them
        base["ema__decay"] = 0.0
    return {**out, "contrastive": base}


def check(config, remat: str, libtpu: bool, error=ValueError) -> None:
    """Whether ``--terms`` can run: libtpu, one remat policy, not NaFlex, terms to remove."""
    why = ("it needs libtpu" if not libtpu else "not with --remat (plan one policy)" if remat
           else "not over a NaFlex recipe's buckets" if config.data.naflex.buckets
           else "the config trains no term besides the contrastive loss (a decoder, silc or "
           "tips)" if not ablations(config) else "")
    if why:
        raise error(f"--terms compiles the step without each objective term: {why}")


def with_shares(full: dict, config, plan_fn: Callable[[object], dict]) -> dict:
    """``full`` (the whole step's plan) with ``term_shares`` (:func:`shares`)."""
    return {**full, "term_shares": shares(config, plan_fn, full)}


def shares(config, plan_fn: Callable[[object], dict], full: dict) -> dict:
    """``{"terms": {term: {hbm_share, flops_share, hbm_gib_per_chip, tflops_per_chip}},
    "shared": {...}}`` from ``plan_fn(config)`` (the plan of a config) of each ablation of
    :func:`ablations` against ``full``, the whole step's plan."""
    rows = {}
    for term, off in ablations(config).items():
        r = plan_fn(compiled.with_overrides(config, **off))
        row = {"hbm_gib_per_chip": r["hbm_gib_per_chip"], "fits": r["fits"],
               "compile_seconds": r["compile_seconds"]}
        keep = term == "contrastive"  # the base is what remains, the others what goes
        row["hbm_share"] = _share(r["hbm_gib_per_chip"], full["hbm_gib_per_chip"], keep)
        if "xla_tflops_per_chip" in r and "xla_tflops_per_chip" in full:
            row["tflops_per_chip"] = r["xla_tflops_per_chip"]
            row["flops_share"] = _share(r["xla_tflops_per_chip"], full["xla_tflops_per_chip"],
                                        keep)
        rows[term] = row
    shared = {k: 1.0 - sum(r[k] for r in rows.values())
              for k in ("hbm_share", "flops_share") if all(k in r for r in rows.values())}
    return {"terms": rows, "shared": shared}


def teacher_figures(setup, teacher_bytes: float, total_bytes: float, flops_share: float) -> dict:
    """Distillation's teachers (the plan's figures): their bytes and FLOPs are known apart."""
    out = {"teachers": len(setup.teachers), "teacher_gib_per_chip": teacher_bytes / 2.0**30,
           "teacher_hbm_share": teacher_bytes / max(total_bytes, 1),
           "teacher_flops_share": flops_share} if setup.teachers else {}
    return {**out, **({"stored_teachers": len(setup.stored)} if setup.stored else {})}


def teacher_rows(r: dict) -> list[tuple[str, str]]:
    """The plan table's rows of :func:`teacher_figures`."""
    rows = []
    if r.get("teachers"):
        rows.append(("distillation teachers", f"{r['teachers']}: "
                     f"{r['teacher_gib_per_chip']:.3f} GiB per chip "
                     f"({r['teacher_hbm_share']:.0%} of HBM used), "
                     f"{r['teacher_flops_share']:.0%} of the step's FLOPs"))
    if r.get("stored_teachers"):
        rows.append(("stored teachers", f"{r['stored_teachers']} (none runs in the step)"))
    return rows


def _share(without: float, whole: float, keep: bool) -> float:
    if not whole:
        return float("nan")
    return without / whole if keep else 1.0 - without / whole


def format_shares(r: dict) -> str:
    """The per-term shares as a markdown table."""
    t = r["term_shares"]
    head = "| term | HBM share | HBM GiB/chip without it | FLOPs share | TFLOP/chip without it |"
    lines = ["", "per-term shares (the step compiled without each term; contrastive: the step "
             "with only it):", head, "|---|---|---|---|---|"]
    for term, row in t["terms"].items():
        what = " (the step with only it)" if term == "contrastive" else ""
        flops = (f"{row['flops_share']:.1%} | {row['tflops_per_chip']:.4g}"
                 if "flops_share" in row else "- | -")
        lines.append(f"| {term}{what} | {row['hbm_share']:.1%} | "
                     f"{row['hbm_gib_per_chip']:.2f} | {flops} |")
    if t["shared"]:
        lines.append("| shared / interactions (1 - the rows) | "
                     f"{t['shared'].get('hbm_share', float('nan')):.1%} | | "
                     f"{t['shared'].get('flops_share', float('nan')):.1%} | |")
    return "\n".join(lines)
