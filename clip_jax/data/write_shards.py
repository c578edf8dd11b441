"""Write (image, caption) pairs as webdataset tar shards, resumably.

    python -m clip_jax.data.write_shards --input captions.csv --out DIR --samples-per-shard 1000
    python -m clip_jax.data.write_shards --input images/ --out DIR --samples-per-shard 1000

Inputs:

* a CSV / TSV file (``.tsv`` is tab separated, anything else comma separated unless
  ``--delimiter``) with a header; ``--image-column`` (default: the first of image, image_path,
  path, filepath, file, filename) holds image paths, relative to the file's directory unless
  absolute; ``--caption-column`` (default: the first of caption, text, title) the captions;
* a ``.parquet`` file with the same columns (needs pyarrow); ``--json-column``: a column of
  JSON objects stored as ``KEY.json``, e.g. boxes (:mod:`clip_jax.data.boxes`);
* a directory: every image below it (sorted by path; the extensions of
  :data:`clip_jax.data.tario.FOLDER_IMAGE_EXTS`: jpg, jpeg, png, webp, bmp) with its caption in
  the ``.txt`` file of the same name beside it.

Rows with an empty caption, a missing image file or an image that does not decode are skipped
(counted in the summary); an input with no usable sample is an error. Images are stored as they
are (other formats, e.g. BMP or GIF, are re-encoded as PNG).

Output (the img2dataset layout, written with ``webdataset.TarWriter``, read by
:mod:`clip_jax.data.tario`)::

    DIR/00000.tar, DIR/00001.tar, ...   KEY.<image ext> + KEY.txt, KEY = 9-digit sample number
    DIR/sizes.json                      {"00000.tar": 1000, ...}
    DIR/checksums.json                  {"00000.tar": "<sha256 hex>", ...}

Tars are deterministic (fixed member metadata), written to a hidden temporary name and renamed
atomically, then recorded in the two JSON files (updated under a file lock, atomically). A
re-run of an interrupted job keeps every shard whose recorded count and sha256 still match the
file (the CLI does not even read its images) and rewrites the others. A re-run assumes the same
input: use a fresh directory for different data.

:func:`write_samples` is the library entry point (used by other generators).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator

from PIL import Image

from clip_jax import cli, files
from clip_jax.data import boxes
from clip_jax.data.progress import Progress
from clip_jax.data.tario import FOLDER_IMAGE_EXTS, IMAGE_EXTS

SIZES, CHECKSUMS, LOCK = "sizes.json", "checksums.json", ".write_shards.lock"
IMAGE_COLUMNS = ("image", "image_path", "path", "filepath", "file", "filename")
CAPTION_COLUMNS = ("caption", "text", "title")


def shard_name(index: int) -> str:
    return f"{index:05d}.tar"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(out_dir: str):
    """An exclusive lock on ``out_dir`` (for concurrent writers updating the JSON files)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    with open(os.path.join(out_dir, LOCK), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: str, obj: dict) -> None:
    files.write_json(path, dict(sorted(obj.items())))


def read_metadata(out_dir: str) -> tuple[dict, dict]:
    """(sizes, checksums) as recorded in ``out_dir``."""
    return (_read_json(os.path.join(out_dir, SIZES)),
            _read_json(os.path.join(out_dir, CHECKSUMS)))


def _record(out_dir: str, name: str, count: int, digest: str) -> None:
    with _locked(out_dir):
        sizes, sums = read_metadata(out_dir)
        sizes[name], sums[name] = count, digest
        _write_json(os.path.join(out_dir, SIZES), sizes)
        _write_json(os.path.join(out_dir, CHECKSUMS), sums)


def is_complete(out_dir: str, name: str, count: int | None = None) -> bool:
    """True if shard ``name`` is recorded (with ``count`` samples, if given) and verifies."""
    sizes, sums = read_metadata(out_dir)
    path = os.path.join(out_dir, name)
    if name not in sizes or name not in sums or not os.path.isfile(path):
        return False
    if count is not None and sizes[name] != count:
        return False
    return sha256_file(path) == sums[name]


def _tmp_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f".{name}.{os.getpid()}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def _remove_stale_tmp(out_dir: str, name: str) -> None:
    """Delete temporary files of ``name`` left by writers that no longer run."""
    prefix = f".{name}."
    for entry in os.listdir(out_dir):
        if entry.startswith(prefix) and entry.endswith(".tmp"):
            pid = entry[len(prefix):-4]
            if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out_dir, entry))


def open_tar_writer(path: str):
    """A ``webdataset.TarWriter`` writing ``path`` deterministically.

    Fixed member metadata (mtime 0, mode 0644, uid / gid 0, no owner names), so the same samples
    give byte-identical files; ``write({"__key__": key, ext: bytes, ...})`` adds a sample's
    members sorted by extension. The tar format is Python's default, POSIX.1-2001 (pax; long
    names are fine): webdataset 1.0's TarWriter does not pass its ``format`` on to tarfile.
    """
    # webdataset's package import loads torch when it is installed (~1 s, ~190 MB): done only
    # when a shard is written, not by every importer of this module or of data.demo
    import webdataset as wds

    return wds.TarWriter(path, user="", group="", mode=0o644, mtime=0, encoder=False)


def _check_sample(key: str, ext: str) -> str:
    ext = ext.lower().lstrip(".")
    if ext not in IMAGE_EXTS:
        raise ValueError(f"sample {key!r}: image extension {ext!r} not in {IMAGE_EXTS}")
    if not key or "." in os.path.basename(key) or key.startswith("/"):
        raise ValueError(f"sample key {key!r} must be non-empty, relative and have no dot")
    return ext


def _write_shard(out_dir: str, name: str, samples: Iterator[tuple[str, bytes, str, str]],
                 limit: int) -> tuple[int, str, str]:
    """Write up to ``limit`` samples to a temporary tar: (count, temp path, sha256)."""
    _remove_stale_tmp(out_dir, name)
    tmp = _tmp_path(out_dir, name)
    count = 0
    try:
        with open_tar_writer(tmp) as sink:
            for key, image, ext, caption, *meta in samples:
                ext = _check_sample(key, ext)
                member = {"__key__": key, ext: bytes(image), "txt": caption.encode("utf-8")}
                if meta and meta[0] is not None:  # KEY.json: boxes checked as the reader does
                    boxes.check(meta[0], f"{out_dir}/{name} key {key!r}")
                    member["json"] = json.dumps(meta[0], sort_keys=True).encode()
                sink.write(member)
                count += 1
                if count >= limit:
                    break
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return count, tmp, sha256_file(tmp)


def _commit(out_dir: str, name: str, count: int, tmp: str, digest: str) -> bool:
    """Rename ``tmp`` into place unless an identical, recorded shard is there: True if renamed."""
    path = os.path.join(out_dir, name)
    sizes, sums = read_metadata(out_dir)
    if (sizes.get(name) == count and sums.get(name) == digest and os.path.isfile(path)
            and sha256_file(path) == digest):
        os.remove(tmp)
        return False
    os.replace(tmp, path)
    _record(out_dir, name, count, digest)
    return True


def write_samples(samples: Iterable[tuple[str, bytes, str, str]], out_dir: str,
                  samples_per_shard: int, start_index: int = 0) -> dict:
    """Write ``(key, image bytes, image ext, caption[, meta])`` samples as shards of
    ``samples_per_shard``; ``meta``, a JSON-able dict or None, is the sample's ``KEY.json``
    (e.g. its ``boxes`` and ``box_captions``, checked by :func:`clip_jax.data.boxes.check`).

    The first shard is ``out_dir/{start_index:05d}.tar``, then consecutive numbers. Keys must
    be unique, non-empty and without dots; ext one of jpg, jpeg, png, webp. Records every shard
    in ``sizes.json`` / ``checksums.json`` (merged with what is there, so several calls with
    different ``start_index`` may share ``out_dir``, even concurrently). A shard identical to a
    recorded, verifying one already in place is left untouched (its file is not rewritten), so
    re-running an interrupted call redoes only missing or damaged shards.

    Returns ``{shard name: sample count}`` of the shards covered by this call.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    files.make_dir(out_dir)
    it = iter(samples)
    out: dict[str, int] = {}
    index = start_index
    while True:
        first = next(it, None)  # never create a shard (or touch its name) past the end
        if first is None:
            break
        name = shard_name(index)
        count, tmp, digest = _write_shard(out_dir, name, itertools.chain([first], it),
                                          samples_per_shard)
        _commit(out_dir, name, count, tmp, digest)
        out[name] = count
        index += 1
        if count < samples_per_shard:
            break
    return out


# ---------------------------------------------------------------------------------------------
# CLI


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str) -> str:
    if wanted:
        if wanted not in columns:
            raise ValueError(f"{what} column {wanted!r} not found; columns: {columns}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise ValueError(f"no {what} column (tried {list(candidates)}; pass --{what}-column); "
                     f"columns: {columns}")


def read_table(path: str, image_column: str | None = None, caption_column: str | None = None,
               delimiter: str | None = None, json_column: str | None = None) -> list[tuple]:
    """(image path made absolute, caption[, ``json_column``'s object]) rows of a CSV/TSV/parquet."""
    base = os.path.dirname(os.path.abspath(path))
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("reading parquet needs pyarrow (pip install pyarrow)") from e
        table = pq.read_table(path)
        columns = list(table.column_names)
        ic = _pick(columns, image_column, IMAGE_COLUMNS, "image")
        cc = _pick(columns, caption_column, CAPTION_COLUMNS, "caption")
        rows = list(zip(*(table.column(c).to_pylist() for c in (ic, cc, *_meta(
            columns, json_column))), strict=True))
    else:
        if delimiter is None:
            delimiter = "\t" if path.endswith(".tsv") else ","
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            columns = list(reader.fieldnames or [])
            ic = _pick(columns, image_column, IMAGE_COLUMNS, "image")
            cc = _pick(columns, caption_column, CAPTION_COLUMNS, "caption")
            rows = [tuple(r[k] for k in (ic, cc, *_meta(columns, json_column))) for r in reader]
    return [_row(path, base, r) for r in rows]


def _meta(columns: list[str], wanted: str | None) -> list[str]:  # the KEY.json column, if any
    return [_pick(columns, wanted, (), "json")] if wanted else []


def _row(path: str, base: str, r: tuple) -> tuple:
    p, c = os.path.join(base, str(r[0] or "")), str(r[1] or "")  # (an absolute path stays)
    try:
        return (p, c, *(json.loads(str(m)) if m else None for m in r[2:]))
    except ValueError as e:
        raise cli.UserError(f"{path}: the JSON column of {p} is not JSON ({e})") from None


def read_folder(root: str) -> list[tuple[str, str]]:
    """(image path, caption) for every image below ``root`` with a caption ``.txt`` beside it.

    Images without a caption file get an empty caption (skipped later, and counted).
    """
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            stem, ext = os.path.splitext(fn)
            if ext.lower().lstrip(".") not in FOLDER_IMAGE_EXTS:
                continue
            txt = os.path.join(dirpath, stem + ".txt")
            caption = ""
            if os.path.isfile(txt):
                with open(txt, encoding="utf-8", errors="replace") as f:
                    caption = f.read()
            rows.append((os.path.join(dirpath, fn), caption))
    rows.sort(key=lambda r: os.path.relpath(r[0], root))
    return rows


def load_image(path: str) -> tuple[bytes, str]:
    """(bytes, ext) of an image file; formats other than jpg/jpeg/png/webp become PNG."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    with open(path, "rb") as f:
        data = f.read()
    if ext in IMAGE_EXTS:
        return data, ext
    with Image.open(io.BytesIO(data)) as img:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return buf.getvalue(), "png"


def decodes(data: bytes) -> str | None:
    """None if ``data`` is an image PIL decodes completely, else the decoder's error."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def write_from_rows(rows: list[tuple[str, str]], out_dir: str, samples_per_shard: int,
                    start_index: int = 0, log=None, progress: bool = False) -> dict:
    """Shard ``(image path, caption)`` rows; returns a summary dict (see the module docstring).
    Every image is decoded before it is stored; one that does not decode is skipped (a shard
    then holds fewer samples; keys keep their row numbers). ``progress``: a progress display on
    stderr (:class:`clip_jax.data.progress.Progress`) instead of a ``log`` line per shard."""
    files.make_dir(out_dir)
    summary = {"rows": len(rows), "samples": 0, "shards": 0, "written": 0, "kept": 0,
               "skipped_empty_caption": 0, "skipped_missing_image": 0,
               "skipped_undecodable_image": 0}
    plan = []
    for path, caption, *meta in rows:
        caption = caption.strip()
        if not caption:
            summary["skipped_empty_caption"] += 1
        elif not os.path.isfile(path):
            summary["skipped_missing_image"] += 1
            if log and summary["skipped_missing_image"] <= 5:
                log(f"missing image, skipped: {path}")
        else:
            plan.append((path, caption, *meta))
    bar = Progress("writing shards", len(plan), "images") if progress else None
    if bar and log:
        log = bar.print  # skipped images: lines of their own beside the progress line

    def checked(first, chunk):
        for j, (p, c, *meta) in enumerate(chunk):
            data, ext = load_image(p)
            error = decodes(data)
            if bar:
                bar.update()
            if error is None:
                yield f"{first + j:09d}", data, ext, c, *meta
                continue
            summary["skipped_undecodable_image"] += 1
            if log and summary["skipped_undecodable_image"] <= 5:
                log(f"image does not decode, skipped: {p} ({error})")

    sizes: dict[str, int] = {}
    for k, first in enumerate(range(0, len(plan), samples_per_shard)):
        chunk = plan[first: first + samples_per_shard]
        name = shard_name(start_index + k)
        recorded = read_metadata(out_dir)[0].get(name)
        if recorded is not None and recorded <= len(chunk) and is_complete(out_dir, name):
            summary["kept"] += 1
            count = recorded
            if bar:
                bar.update(len(chunk))
        else:
            count, tmp, digest = _write_shard(out_dir, name, checked(first, chunk), len(chunk))
            if count == 0:
                os.remove(tmp)
                continue
            os.replace(tmp, os.path.join(out_dir, name))
            _record(out_dir, name, count, digest)
            summary["written"] += 1
            if log and not bar:
                log(f"wrote {name} ({count} samples)")
        sizes[name] = count
    summary["samples"], summary["shards"] = sum(sizes.values()), len(sizes)
    if bar:
        bar.close(f"wrote {summary['written']} and kept {summary['kept']} shard(s) of "
                  f"{len(plan):,} images in {out_dir}: {time.monotonic() - bar.start:.1f} s")
    if sizes:
        last = start_index + len(sizes) - 1
        summary["pattern"] = os.path.join(out_dir, f"{{{start_index:05d}..{last:05d}}}.tar")
    return summary


def main(argv: list[str] | None = None) -> dict:
    ap = cli.ArgumentParser(prog="python -m clip_jax.data.write_shards",
                            description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="CSV / TSV / parquet file or image folder")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--samples-per-shard", type=int, default=1000)
    ap.add_argument("--image-column", default=None)
    ap.add_argument("--caption-column", default=None)
    ap.add_argument("--json-column", default=None, help="JSON objects as KEY.json (boxes)")
    ap.add_argument("--delimiter", default=None, help="CSV delimiter (default: by extension)")
    ap.add_argument("--start-index", type=int, default=0, help="number of the first shard")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.samples_per_shard < 1:
        ap.error("--samples-per-shard must be >= 1")
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if os.path.isdir(args.input):
        rows = read_folder(args.input)
    elif os.path.isfile(args.input):
        rows = read_table(args.input, args.image_column, args.caption_column, args.delimiter,
                          args.json_column)
    else:
        ap.error(f"--input {args.input!r} is neither a file nor a directory")
    if not rows:
        raise cli.UserError(f"--input {args.input}: no images found (a folder needs "
                            f"{'/'.join(FOLDER_IMAGE_EXTS)} files with a .txt caption beside "
                            "each)")
    summary = write_from_rows(rows, args.out, args.samples_per_shard, args.start_index, log,
                              progress=not args.quiet)
    print(json.dumps(summary))
    if summary["samples"] == 0:
        skipped = {k: v for k, v in summary.items() if k.startswith("skipped_") and v}
        raise cli.UserError(f"--input {args.input}: no usable sample among {len(rows)} rows "
                            f"({', '.join(f'{k[8:]}: {v}' for k, v in skipped.items())})")
    return summary


if __name__ == "__main__":
    sys.exit(cli.run(lambda argv: main(argv) and 0))
