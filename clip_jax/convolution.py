"""The convolutions behind :class:`clip_jax.layers.Conv`: oneDNN's kernels on CPU, XLA's
elsewhere.

XLA:CPU's own convolutions run at a fraction of the machine's matmul rate: RN50's 3x3
convolutions forward + backward took about twice the time of oneDNN's (the library torch's CPU
path runs), and the 1x1 ones, as matmuls, paid a transposed copy of every activation for their
weight gradients: most of clip_jax's gap to open_clip on a CPU. So on CPU, where the
``onednn`` extra (``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp``, Linux x86-64) and a C++
compiler are present, ``convolution_onednn.cc`` is compiled once into a cache (keyed by its
source, jaxlib and oneDNN; ``$XDG_CACHE_HOME/clip_jax``) and :func:`onednn` runs its forward,
input-gradient and weight-gradient primitives as XLA custom calls, on NHWC activations and
``nn.Conv``'s (k, k, in / groups, out) kernels as they are. :func:`usable` says where: float32
on a CPU (the mesh's platform, so ``clip_jax.plan`` still compiles TPU steps), the kernels
built; ``CLIP_JAX_CONV=xla`` turns the path off. Elsewhere :func:`xla` runs
``lax.conv_general_dilated``, on CPU in the forms XLA:CPU runs fastest (below). Both agree with
``nn.Conv`` to float32 rounding (tests/test_layers.py).

Under a mesh the custom call runs inside ``shard_map`` over the batch (each device convolves
its own examples and the weight gradient is summed over them), so a sharded step stays sharded.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import math
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

_SOURCE = pathlib.Path(__file__).with_name("convolution_onednn.cc")
_TARGETS = {"fwd": "ClipJaxConvForward", "bwd_data": "ClipJaxConvBackwardData",
            "bwd_weights": "ClipJaxConvBackwardWeights"}
log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_PLATFORM_OK = platform.system() == "Linux" and platform.machine() == "x86_64"


def _dist_file(dist: str, suffix: str) -> pathlib.Path | None:
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    paths = (pathlib.Path(found.locate_file(f)).resolve() for f in found.files or [])
    return next((p for p in paths if p.as_posix().endswith(suffix)), None)


def _onednn_install() -> tuple[pathlib.Path, pathlib.Path, str] | None:
    """(libdnnl.so, dnnl.hpp, oneDNN's version) of the 'onednn' extra; None where it is absent."""
    lib = _dist_file("onednn-cpu-gomp", "lib/libdnnl.so")
    header = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    if lib is None or header is None:
        return None
    return lib, header, importlib.metadata.version("onednn-cpu-gomp")


class Unavailable(RuntimeError):
    """oneDNN's kernels cannot run here; ``chosen`` when that follows from the install (another
    platform, the ``onednn`` extra absent) rather than from a failure worth a warning."""

    def __init__(self, why: str, chosen: bool = False):
        super().__init__(why)
        self.chosen = chosen


def _compiler() -> str:
    """The C++ compiler to build with: ``$CXX`` (a name on the PATH or a path), else ``c++`` or
    ``g++`` on the PATH."""
    asked = os.environ.get("CXX")
    if asked:
        found = shutil.which(asked)
        if found is None:
            raise Unavailable(f"the C++ compiler CXX={asked} was not found")
        return found
    found = shutil.which("c++") or shutil.which("g++")
    if found is None:
        raise Unavailable("no C++ compiler on the PATH (c++, g++ or $CXX) to build them")
    return found


def build() -> pathlib.Path:
    """Compile ``convolution_onednn.cc`` against the installed oneDNN once per machine (cached
    under ``$XDG_CACHE_HOME/clip_jax``, keyed by the source, jaxlib's and oneDNN's versions and
    the compiler); raises :class:`Unavailable` saying why it can't. A failed compile is
    remembered beside the cache (``.failed``, holding the compiler's message): later processes
    raise it again without retrying until that file is deleted or the key changes."""
    if not _PLATFORM_OK:
        raise Unavailable("oneDNN's kernels are built on Linux x86-64 only", chosen=True)
    installed = _onednn_install()
    if installed is None:
        raise Unavailable("the 'onednn' extra is not installed (pip install 'clip_jax[onednn]' "
                          "and a C++ compiler for faster CPU convolutions)", chosen=True)
    lib, header, version = installed
    cxx = _compiler()
    parts = [_SOURCE.read_text(), importlib.metadata.version("jaxlib"), version, cxx]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    out = pathlib.Path(cache) / "clip_jax" / f"convolution_onednn-{key}.so"
    failed = out.with_suffix(".failed")
    if out.exists():
        return out
    if failed.exists():
        raise Unavailable(f"building the oneDNN kernels failed on this machine before (delete "
                          f"{failed} to retry): {failed.read_text().strip()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", str(_SOURCE), "-o", tmp,
           f"-I{jax.ffi.include_dir()}", f"-I{header.parents[2]}", f"-L{lib.parent}", "-ldnnl",
           f"-Wl,-rpath,{lib.parent}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        error = done.stderr.strip()[-500:] or f"exit status {done.returncode}"
    except OSError as e:  # a compiler that cannot be executed
        done, error = None, str(e)
    if done is None or done.returncode:
        os.unlink(tmp)
        why = f"{cxx}: {error}"
        _write_atomic(failed, why)
        raise Unavailable(f"building the oneDNN kernels failed: {why}")
    os.replace(tmp, out)  # atomic: processes building at once each leave a whole library
    return out


def _write_atomic(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def _registered() -> bool:
    """Build, load and register the kernels once; False if not (see :func:`reason`)."""
    with _LOCK:  # threads tracing at once register once
        return reason() is None


@functools.cache
def reason() -> str | None:
    """Why oneDNN's kernels do not run in this process (None: built and registered). Said once:
    a warning where they were asked for (the extra is installed) and failed, else at INFO."""
    try:
        lib = ctypes.cdll.LoadLibrary(str(build()))
    except (Unavailable, OSError) as e:
        chosen = getattr(e, "chosen", False)
        log.log(logging.INFO if chosen else logging.WARNING,
                "XLA's convolutions run instead of oneDNN's: %s", e)
        return str(e)
    for name, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(f"clip_jax_conv_{name}",
                                    jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return None


def _platform() -> str:
    """The platform being traced for: the mesh's (``clip_jax.plan`` sets a TPU one), else the
    default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def usable(x, kernel) -> bool:
    """Whether :func:`onednn` runs ``x`` (B, H, W, C) with ``kernel``."""
    return (x.dtype == kernel.dtype == np.float32 and x.ndim == 4 and _platform() == "cpu"
            and os.environ.get("CLIP_JAX_CONV", "onednn") != "xla" and _registered())


def _call(name, out_shape, a, b, stride, pad):
    return jax.ffi.ffi_call(f"clip_jax_conv_{name}", jax.ShapeDtypeStruct(out_shape, a.dtype),
                            vmap_method="sequential")(a, b, stride=np.int64(stride),
                                                      pad=np.int64(pad))


def _batch_axes(batch: int) -> tuple[str, ...]:
    """The mesh axes (automatic, larger than 1) to split the batch over; () for none."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    axes = tuple(a for a, n, t in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types)
                 if n > 1 and t == jax.sharding.AxisType.Auto)
    return axes if axes and batch % math.prod(mesh.shape[a] for a in axes) == 0 else ()


def _per_shard(f, axes, in_specs, out_specs):
    if not axes:
        return f
    return jax.shard_map(f, in_specs=in_specs, out_specs=out_specs, axis_names=set(axes),
                         check_vma=False)


def onednn(x, kernel, stride: int = 1, pad: int = 0):
    """``lax.conv_general_dilated`` (NHWC, HWIO, padding ``pad`` on every side, groups = C /
    the kernel's input dim) on oneDNN; only where :func:`usable` says so."""
    k = kernel.shape[0]
    # rows / columns no output window reaches (strided): oneDNN wants none, XLA ignores them
    keep = [n - max(0, (n + 2 * pad - k) % stride - pad) for n in x.shape[1:3]]
    return _onednn(x[:, :keep[0], :keep[1]], kernel, stride, pad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn(x, kernel, stride, pad):
    def local(x, kernel):
        (b, h, w, _), (k, o) = x.shape, kernel.shape[::3]
        oh, ow = ((n + 2 * pad - k) // stride + 1 for n in (h, w))
        return _call("fwd", (b, oh, ow, o), x, kernel, stride, pad)

    axes = _batch_axes(x.shape[0])
    return _per_shard(local, axes, (P(axes), P()), P(axes))(x, kernel)


def _onednn_bwd(stride, pad, res, dy):
    x, kernel = res
    axes = _batch_axes(x.shape[0])

    def local(x, kernel, dy):
        dx = _call("bwd_data", x.shape, dy, kernel, stride, pad)
        dw = _call("bwd_weights", kernel.shape, x, dy, stride, pad)
        return dx, (jax.lax.psum(dw, axes) if axes else dw)

    return _per_shard(local, axes, (P(axes), P(), P(axes)), (P(axes), P()))(x, kernel, dy)


_onednn.defvjp(lambda x, kernel, stride, pad: (_onednn(x, kernel, stride, pad), (x, kernel)),
               _onednn_bwd)


# XLA's convolutions, in the forms XLA:CPU runs fastest


def _pad_same(x, k: int):
    """``x`` (B, H, W, C) padded by ``k // 2`` on each side of H and W: a "same" k x k window."""
    return jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))


@jax.custom_vjp
def _depthwise_shifts(x, kernel):
    """Depthwise stride-1 "same" convolution (kernel (k, k, 1, C)) as k*k shifted products
    (XLA:CPU's grouped convolution is slow). The VJP keeps only ``x`` (autodiff kept the k*k
    slices: convnext_base's tower at batch 4 held 4.6 GiB, now 1.2) and loops over the kernel
    positions for the weight gradient, one slice alive (unrolled: all kept, or 3x slower)."""
    k, (h, w) = kernel.shape[0], x.shape[1:3]
    xp = _pad_same(x, k)
    return sum(xp[:, i:i + h, j:j + w] * kernel[i, j, 0] for i in range(k) for j in range(k))


def _depthwise_bwd(res, dy):
    (x, kernel), k = res, res[1].shape[0]
    dx, xp = _depthwise_shifts(dy, jnp.flip(kernel, (0, 1))), _pad_same(x, k)

    def tap(_, n):  # one kernel position's weight gradient
        return None, jnp.sum(jax.lax.dynamic_slice(xp, (0, n // k, n % k, 0), x.shape) * dy,
                             (0, 1, 2))

    dw = jax.lax.scan(tap, None, jnp.arange(k * k))[1].reshape(k, k, 1, -1)
    return dx, dw.astype(kernel.dtype)


_depthwise_shifts.defvjp(lambda x, kernel: (_depthwise_shifts(x, kernel), (x, kernel)),
                         _depthwise_bwd)


def _lax(x, kernel, stride=1, padding=None, groups=1):
    p = kernel.shape[0] // 2 if padding is None else padding
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(p, p)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


@jax.custom_vjp
def _conv_same_cpu(x, kernel):
    """A stride-1 "same" convolution whose weight gradient is im2col matmuls, ``dy^T @ cols``
    (one per kernel row), where XLA:CPU's convolution weight gradient transposes both operands
    and ran at about a quarter of the forward's rate (RN50's 3x3 convolutions; the image
    tower's forward + backward at batch 8 is 8-12% faster so); the input gradient is the
    transposed convolution (the kernel flipped in space, in/out swapped), as autodiff gives."""
    return _lax(x, kernel)


def _conv_same_bwd(res, dy):
    x, kernel = res
    k, (h, w, c) = kernel.shape[0], x.shape[1:]
    dx = _lax(dy, jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
    xp = _pad_same(x, k)
    # the columns of the k horizontal shifts once, (B, H + k - 1, W, k * C); each kernel row i
    # is then a matmul over rows i..i+H of them: 10-20% faster than all k * k shifts
    # concatenated (most of this gradient's time is building the columns)
    cols = jnp.concatenate([xp[:, :, j:j + w] for j in range(k)], -1)
    dy_t = dy.reshape(-1, dy.shape[-1]).T
    dw_t = jnp.concatenate([jnp.dot(dy_t, cols[:, i:i + h].reshape(-1, k * c))
                            for i in range(k)], -1)
    return dx, dw_t.T.reshape(kernel.shape).astype(kernel.dtype)


_conv_same_cpu.defvjp(lambda x, kernel: (_lax(x, kernel), (x, kernel)), _conv_same_bwd)


def xla(x, kernel, stride: int = 1, pad: int = 0, groups: int = 1):
    """``lax.conv_general_dilated`` as :func:`onednn` computes it; on CPU a depthwise "same"
    convolution (ConvNeXt's 7x7) is a sum of k*k shifted products (2.5-3.6x faster forward +
    backward than XLA:CPU's grouped convolution) and a dense "same" one (ResNet's 3x3) keeps
    XLA's forward with im2col matmuls for its weight gradient."""
    k, cin = kernel.shape[0], x.shape[-1]
    if stride == 1 and 2 * pad == k - 1 and jax.default_backend() == "cpu":
        if groups == cin == kernel.shape[-1]:
            return _depthwise_shifts(x, kernel)
        if groups == 1:
            return _conv_same_cpu(x, kernel)
    return _lax(x, kernel, stride, pad, groups)
