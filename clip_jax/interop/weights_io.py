"""Weight files, pickle-free: safetensors (read and written atomically), sharded safetensors
indexes, and PyTorch state dicts read only through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from clip_jax import files


def save_safetensors(tensors: Mapping[str, Any], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write (atomically: temp file + rename) contiguous NumPy copies of ``tensors``."""
    path = Path(path)
    arrays = {k: np.array(v, order="C", copy=None) for k, v in tensors.items()}  # keeps 0-d
    with files.atomic_path(path) as tmp:
        try:
            save_file(arrays, tmp, metadata=dict(metadata or {}))
        except SafetensorError as e:  # its write errors (a full disk) are OS errors
            raise OSError(str(e)) from e


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types on bad headers
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict through ``torch.load(weights_only=True)``: no code is executed."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path} is a PyTorch pickle; clip_jax reads those only through "
            f"torch.load(weights_only=True), which needs torch (pip install 'clip_jax[compare]'). "
            f"Alternatively convert it to safetensors (safetensors.torch.save_file) where you "
            f"trust the file, and pass the .safetensors file.") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True): {e}. TorchScript "
            f"archives (OpenAI's original .pt files) and pickles of custom classes are refused; "
            f"convert the state dict to safetensors.") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # open_clip training checkpoints: {"epoch", "state_dict", ...}
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: _torch_to_numpy(v) for k, v in obj.items() if torch.is_tensor(v)}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``.safetensors``, a ``*.safetensors.index.json`` shard index, or ``.pt/.pth/.bin``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        out: dict[str, np.ndarray] = {}
        for name in sorted(set(weight_map.values())):
            out.update(read_state_dict(path.parent / name))
        return out
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return read_torch_state_dict(path)
    raise ValueError(f"{path}: unknown weights format (expected .safetensors, a "
                     f".safetensors.index.json, or a .pt/.pth/.bin PyTorch state dict)")
