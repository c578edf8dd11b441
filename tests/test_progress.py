"""The progress display of the long preparation steps (clip_jax/data/progress.py) and its use
by the shard writer."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from clip_jax.data import progress as progress_lib
from clip_jax.data import write_shards
from clip_jax.data.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_one_line_per_tenth_then_the_total():
    out = io.StringIO()
    with Progress("work", 1000, "items", stream=out) as p:
        for _ in range(1000):
            p.update()
    lines = out.getvalue().splitlines()
    assert [int(re.search(r"\((\d+)%\)", line).group(1)) for line in lines[:-1]] == list(
        range(10, 100, 10))
    assert lines[0].startswith("work: 100/1,000 items (10%) ")
    assert re.fullmatch(r"work: 1,000 items in [\d.]+ s", lines[-1])
    with Progress("big steps", 10, stream=(out := io.StringIO())) as p:
        p.update(7)  # 70% at once: one line, not seven
        p.update(3)
    assert len(out.getvalue().splitlines()) == 2


def test_on_a_terminal_one_line_redrawn_in_place(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_lib.time, "monotonic", lambda: now[0])
    term = _Terminal()
    p = Progress("work", 40, stream=term)
    for i in range(40):
        now[0] += 0.0625  # 16 updates a second: a redraw every 4th (REDRAW_SECONDS 0.2)
        p.update()
        if i == 20:
            p.print("a file was skipped")
    p.close()
    text = term.getvalue()
    assert text.count("\n") == 2  # the skipped-file line and the closing line
    draws = [d for d in text.split("\r") if d.startswith("work: ") and "/40" in d]
    done = [int(re.match(r"work: (\d+)/40", d).group(1)) for d in draws]
    assert done == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 40]
    assert "\r\x1b[Ka file was skipped\nwork: 21/40 (52%)" in text  # the line comes back
    assert text.endswith("\rwork: 40 in 2.5 s\x1b[K\n")
    with pytest.raises(ValueError, match="total must be >= 0"):
        Progress("x", -1)


def test_write_shards_shows_progress_instead_of_a_line_per_shard(tmp_path, capsys):
    rows = []
    for i in range(30):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (i, 0, 0)).save(path)
        rows.append((str(path), f"caption {i}"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rows.append((str(tmp_path / "bad.png"), "broken"))
    logged = []
    summary = write_shards.write_from_rows(rows, str(tmp_path / "out"), 10, log=logged.append,
                                           progress=True)
    assert summary["samples"] == 30 and summary["skipped_undecodable_image"] == 1
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("image does not decode, skipped: ") for line in err)
    assert any(line.startswith("writing shards: ") and "/31 images" in line for line in err)
    assert err[-1].startswith(f"wrote 3 and kept 0 shard(s) of 31 images in {tmp_path / 'out'}")
    assert logged == []  # the progress display took the log lines over
    again = write_shards.write_from_rows(rows, str(tmp_path / "out"), 10, progress=True)
    assert again["kept"] == 3
    assert capsys.readouterr().err.splitlines()[-1].startswith("wrote 0 and kept 3 shard(s)")
