"""``mu lambdaize`` word parsing: any positional words survive exactly, options anywhere."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mu.cli import parse_lambdaize_args

NAMES = {
    "--memory", "--timeout", "--role", "--region", "--runtime", "--name", "--out-dir",
    "--skip-upload", "--allow-dynamic", "--backend", "--endpoint-url", "--code-bucket",
    "--also", "-h", "--help", "--",
}


def is_positional(word: str) -> bool:
    """Not one of lambdaize's options (nor ``--option=value``), nor ``--``."""
    return word not in NAMES and word.partition("=")[0] not in NAMES


WORDS = st.lists(st.text(max_size=12).filter(is_positional), min_size=1, max_size=6)
OPTIONS = st.lists(
    st.sampled_from([
        ("--name", "f"), ("--name=f",), ("--skip-upload",), ("--memory", "512"),
        ("--out-dir", "-dash-dir"), ("--out-dir=-x",), ("--backend", "local"),
        ("--also", "./vpxenc"), ("--also=./other",),
    ]),
    max_size=4,
)


@given(WORDS, OPTIONS, st.lists(st.integers(min_value=0), max_size=4))
def test_positional_words_survive_exactly_wherever_options_go(
    words: list[str], options: list[tuple[str, ...]], where: list[int]
) -> None:
    # Each option goes in whole (with its value) between two words, never between an
    # earlier option and its value.
    groups = [[word] for word in words]
    for option, position in zip(options, where + [len(groups)] * len(options), strict=False):
        at = min(position, len(groups))
        groups[at:at] = [list(option)]
    argv = [word for group in groups for word in group]
    args = parse_lambdaize_args(argv)
    assert [args.executable, args.pre_args, args.post_args, *args.extra_files][: len(words)] \
        == words
    assert args.extra_files == words[3:]
    given_names = [o[0].partition("=")[0] for o in options]
    if "--skip-upload" in given_names:
        assert args.skip_upload is True
    if "--memory" in given_names:
        assert args.memory == 512
    # Every --also names one more program, in the order given; none is positional.
    nexts = [*argv[1:], ""]
    assert args.also == [w.partition("=")[2] or nxt for w, nxt in zip(argv, nexts, strict=True)
                         if w.partition("=")[0] == "--also"]
    if "--out-dir" in given_names:
        # The last --out-dir on the command line wins (options go in at any position).
        last = [w for w in argv if w in ("--out-dir", "--out-dir=-x")][-1]
        assert args.out_dir == ("-x" if last == "--out-dir=-x" else "-dash-dir")


@given(st.lists(st.text(max_size=12), min_size=1, max_size=6))
def test_after_a_double_dash_every_word_is_positional(words: list[str]) -> None:
    args = parse_lambdaize_args(["--skip-upload", "--", *words])
    assert [args.executable, args.pre_args, args.post_args, *args.extra_files][: len(words)] \
        == words
    assert args.skip_upload is True
