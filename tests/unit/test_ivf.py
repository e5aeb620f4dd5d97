"""mu.ivf: write/read round trips, stitch undoes split, headers and errors."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mu import ivf
from mu.errors import ConfigError

HEADERS = st.builds(
    ivf.Header,
    fourcc=st.sampled_from([b"VP90", b"VP80"]),
    width=st.integers(1, 0xFFFF),
    height=st.integers(1, 0xFFFF),
    rate=st.integers(1, 2**32 - 1),
    scale=st.integers(1, 2**32 - 1),
)
PAYLOADS = st.lists(st.binary(max_size=40), max_size=30)


def video(header: ivf.Header, payloads: list[bytes]) -> ivf.Ivf:
    """Frames at timestamps 0, 1, 2, ... as the encoder writes them."""
    return ivf.Ivf(header, tuple(ivf.Frame(n, data) for n, data in enumerate(payloads)))


@given(HEADERS, PAYLOADS, st.lists(st.integers(0, 2**40), max_size=30))
def test_write_then_read_is_the_same_file(
    header: ivf.Header, payloads: list[bytes], stamps: list[int]
) -> None:
    frames = tuple(ivf.Frame(pts, data) for pts, data in zip(stamps, payloads, strict=False))
    original = ivf.Ivf(header, frames)
    data = ivf.write(original)
    assert len(data) == 32 + sum(12 + len(f.data) for f in frames)
    assert int.from_bytes(data[24:28], "little") == len(frames)  # the frame count
    assert ivf.read(data) == original


@given(HEADERS, PAYLOADS, st.lists(st.integers(1, 12), max_size=8))
def test_stitch_of_splits_is_the_original(
    header: ivf.Header, payloads: list[bytes], sizes: list[int]
) -> None:
    original = video(header, payloads)
    chunks = ivf.split(original, sizes)
    assert all(c.frames[0].pts == 0 for c in chunks)  # each as an encoder would write it
    assert sum(len(c.frames) for c in chunks) == len(payloads)
    if chunks:
        assert ivf.stitch(chunks) == original
        assert ivf.read(ivf.write(ivf.stitch([ivf.read(ivf.write(c)) for c in chunks]))) \
            == original


@given(HEADERS, st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=6, unique=True),
                         min_size=1, max_size=6))
def test_stitched_timestamps_increase_and_keep_the_gaps_inside_chunks(
    header: ivf.Header, stamps: list[list[int]]
) -> None:
    chunks = [ivf.Ivf(header, tuple(ivf.Frame(p, b"") for p in sorted(s))) for s in stamps]
    out = [f.pts for f in ivf.stitch(chunks).frames]
    assert out[0] == 0
    assert all(a < b for a, b in pairwise(out))
    gaps = [b - a for s in stamps for a, b in pairwise(sorted(s))]
    assert sorted(b - a for a, b in pairwise(out) if b - a > 1) \
        == sorted(g for g in gaps if g > 1)


def test_chunks_that_differ_are_refused_by_name() -> None:
    a = ivf.Ivf(ivf.Header(b"VP90", 64, 48, 24, 1), (ivf.Frame(0, b"x"),))
    b = ivf.Ivf(ivf.Header(b"VP90", 64, 32, 24, 1), (ivf.Frame(0, b"y"),))
    with pytest.raises(ConfigError) as info:
        ivf.stitch([a, b], ["00000000.ivf", "00000001.ivf"])
    assert str(info.value) == ("00000001.ivf does not match 00000000.ivf: VP90 64x32 at 24/1 "
                               "frames per second against VP90 64x48 at 24/1 frames per second")
    with pytest.raises(ConfigError, match="no chunks"):
        ivf.stitch([])


@pytest.mark.parametrize(
    ("cut", "message"),
    [(10, "shorter than an IVF header"), (40, "ends inside the header of frame 0"),
     (46, "ends inside frame 0: 5 bytes announced, 2 left")],
)
def test_a_truncated_file_is_named_with_where_it_ends(cut: int, message: str) -> None:
    data = ivf.write(video(ivf.Header(b"VP90", 8, 8, 24, 1), [b"12345"]))
    with pytest.raises(ConfigError, match=message):
        ivf.read(data[:cut], "c.ivf")


def test_not_ivf_and_a_wrong_count_are_refused() -> None:
    with pytest.raises(ConfigError, match="is not an IVF file"):
        ivf.read(b"RIFF" + bytes(40))
    data = bytearray(ivf.write(video(ivf.Header(b"VP90", 8, 8, 24, 1), [b"a", b"b"])))
    data[24] = 3
    with pytest.raises(ConfigError, match="says it has 3 frames but holds 2"):
        ivf.read(bytes(data))
