"""Rematerialisation policies (``model.remat``): what each residual block keeps from its forward
pass for the backward, by the names the blocks of :mod:`clip_jax.layers` tag with
``checkpoint_name``; everything not kept is recomputed from the block's input in the backward.
``python -m clip_jax.plan --remat auto`` compiles the step under each and picks the fastest
that fits the chip."""

from __future__ import annotations

import flax.linen as nn
import jax


def _save(*names):
    return jax.checkpoint_policies.save_only_these_names(*names)


# From the fastest and largest to the leanest. The names: ``qkv`` (the fused q|k|v
# projection), ``attn_core`` (softmax(qk)v, before the output projection), ``attn_out`` (the
# output projection), ``mlp_fc`` (the MLP's first matmul, before the activation) and
# ``mlp_out``. MaxText's list (``RematPolicy``) is the model for the names.
POLICIES = {
    "none": None,  # keep every activation: no recomputation, the most memory
    "save_dot_except_mlp": _save("qkv", "attn_core", "attn_out"),  # recompute the MLP only
    "minimal": _save("qkv", "attn_out", "mlp_fc", "mlp_out"),  # every weight matmul's output
    "save_attention": _save("qkv", "attn_core"),  # what attention's backward needs
    "save_qkv_proj": _save("qkv"),
    "save_out_proj": _save("attn_out"),
    # the weight matmuls' outputs moved to host memory in the forward and back for the backward
    "minimal_offloaded": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=(
            "qkv", "attn_out", "mlp_fc", "mlp_out"),
        offload_src="device", offload_dst="pinned_host"),
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each block's input
}


def remat_name(value) -> str:
    """A ``model.remat`` value as a policy name: a name of :data:`POLICIES`, or the booleans
    older configs and bundles hold (true: ``full``, false: ``none``)."""
    if isinstance(value, bool) or value is None:
        return "full" if value else "none"
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return "full" if value.lower() == "true" else "none"
    if value == "auto":
        raise ValueError("model.remat=auto is chosen by the plan: run python -m clip_jax.plan "
                         "--config CONFIG --remat auto and set the policy it chooses")
    if value not in POLICIES:
        raise ValueError(f"model.remat={value!r}: must be one of {', '.join(POLICIES)}")
    return value


def remat(block, policy, scan: bool = False):
    """``block`` (a Linen module class) rematerialised under ``policy`` (a ``model.remat``
    value); unchanged for ``none``."""
    name = remat_name(policy)
    if name == "none":
        return block
    return nn.remat(block, prevent_cse=not scan, policy=POLICIES[name])
