"""Run-record parsing and the timeline picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mu.errors import ConfigError
from mu.plot import plot_timeline, read_record


def write_record(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS: list[dict[str, object]] = [
    {"actor": 1, "state": "FinalState", "ok": True, "error": None,
     "timestamps": [[0.0, "ConfigState"], [0.5, "UploadState"], [0.9, "FinalState"]]},
    {"actor": 0, "state": "ErrorState", "ok": False, "error": "png2y4m: bad CRC",
     "timestamps": [[0.1, "ConfigState"], [0.7, "ErrorState"]]},
    {"actor": 0, "attempt": 1, "state": "FinalState", "ok": True, "error": None,
     "timestamps": [[0.8, "ConfigState"], [1.2, "FinalState"]]},
]


def test_read_record_sorts_by_actor_and_attempt(tmp_path: Path) -> None:
    attempts = read_record(write_record(tmp_path / "run.jsonl", ROWS))
    assert [(a.actor, a.attempt, a.ok) for a in attempts] == [(0, 0, False), (0, 1, True), (1, 0, True)]
    assert attempts[0].error == "png2y4m: bad CRC"


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = plot_timeline(write_record(tmp_path / "run.jsonl", ROWS), tmp_path / "t.png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 500 and img.height > 200
        # Something red is drawn for the failure marker.
        rgb = np.asarray(img.convert("RGB")).astype(int)
        reds = ((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum()
        assert reds > 10


@pytest.mark.parametrize(
    ("content", "match"),
    [("", "no entries"), ("{not json\n", "line 1"), ('{"actor": 1}\n', "line 1")],
)
def test_bad_records_are_named(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_record(path)


def test_missing_record(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read run record"):
        read_record(tmp_path / "absent.jsonl")


def test_the_title_carries_the_cost_when_the_record_does(tmp_path: Path) -> None:
    from mu.plot import default_title

    priced = [
        {**ROWS[0], "cost": {"dollars": "0.0000250", "source": "REPORT"}},
        {**ROWS[1], "cost": {"dollars": "0.0000100", "source": "upper bound"}},
    ]
    attempts = read_record(write_record(tmp_path / "priced.jsonl", priced))
    assert default_title(attempts) == "2 workers, 1 failed, cost $0.000035 (1 of 2 upper bounds)"
    plain = read_record(write_record(tmp_path / "plain.jsonl", ROWS))
    assert default_title(plain) == "3 workers, 1 failed"
    out = plot_timeline(tmp_path / "priced.jsonl", tmp_path / "t.png")
    with Image.open(out) as image:
        assert image.size[0] > 0


def test_cost_labels_each_bar_with_its_bill(tmp_path: Path) -> None:
    priced = [
        {**ROWS[0], "cost": {"dollars": "0.0000250", "source": "REPORT", "kind": "work"}},
        {**ROWS[1], "cost": {"dollars": "0.0000100", "source": "upper bound",
                             "kind": "retry"}},
        ROWS[2],
    ]
    attempts = read_record(write_record(tmp_path / "priced.jsonl", priced))
    assert [a.cost_label() for a in attempts] == ["<=$0.000010 retry", "", "$0.000025 work"]
    plain = plot_timeline(tmp_path / "priced.jsonl", tmp_path / "plain.png")
    labelled = plot_timeline(tmp_path / "priced.jsonl", tmp_path / "cost.png", cost=True)
    with Image.open(plain) as a, Image.open(labelled) as b:
        # the labels are drawn: the pictures differ (same size, other pixels)
        assert a.size == b.size
        assert (np.asarray(a.convert("L")) != np.asarray(b.convert("L"))).any()
