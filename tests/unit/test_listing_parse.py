"""mu.apps.png2y4m.listing_keys reads a ListObjectsV2 answer as ElementTree does.

ElementTree is the referee: for S3-shaped listings whose keys hold every character XML
allows, escaped every way XML allows (named entities, decimal and hexadecimal character
references, raw ``>``, quotes and line ends), laid out with or without a declaration, a
namespace and indentation, both read the same keys and the same ``IsTruncated``. Anything
outside that shape (CDATA, comments, prefixed names, a cut-off body, a bare ``&``) is
refused with ValueError, which sends the listing to botocore's paginator.
"""

from __future__ import annotations

from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mu.apps.png2y4m import listing_keys

xml_chars = st.characters(
    exclude_categories=["Cs"],
    exclude_characters=[chr(c) for c in range(0x20) if chr(c) not in "\t\n\r"] + [
        "\ufffe", "\uffff"],
)
keys = st.text(st.one_of(xml_chars, st.sampled_from("&<>\"'\r\n\t ]]>")), min_size=1,
               max_size=30)


def referee(body: bytes) -> tuple[list[str], bool]:
    """What the listing parser read before: ElementTree."""
    root = ElementTree.fromstring(body)
    namespace = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != f"{namespace}ListBucketResult":
        raise ValueError(f"not a listing: {root.tag}")
    found = [e.text or "" for e in root.iterfind(f"{namespace}Contents/{namespace}Key")]
    return found, root.findtext(f"{namespace}IsTruncated") == "true"


@st.composite
def escaped(draw: st.DrawFn, text: str) -> str:
    """``text`` as XML character data, each character escaped one of the ways XML allows."""
    out: list[str] = []
    for char in text:
        ways = [f"&#{ord(char)};", f"&#x{ord(char):x};", f"&#x{ord(char):X};"]
        # A raw \r would be read as \n (line-end normalisation); "]]>" may not appear raw.
        if char not in "&<\r" and not (char == ">" and "".join(out).endswith("]]")):
            ways.append(char)
        ways += {"&": ["&amp;"], "<": ["&lt;"], ">": ["&gt;"], '"': ["&quot;"],
                 "'": ["&apos;"]}.get(char, [])
        out.append(draw(st.sampled_from(ways)))
    return "".join(out)


@st.composite
def listings(draw: st.DrawFn) -> tuple[bytes, list[str], bool]:
    names = draw(st.lists(keys, max_size=8))
    truncated = draw(st.booleans())
    gap = draw(st.sampled_from(["", "\n", "\n  ", "\r\n    "]))
    contents = "".join(
        f"{gap}<Contents>{gap}<Key>{draw(escaped(name))}</Key>{gap}<LastModified>"
        f"2026-12-02T17:00:00.000Z</LastModified>{gap}<ETag>&quot;d41d8&quot;</ETag>{gap}"
        f"<Size>1</Size>{gap}<StorageClass>STANDARD</StorageClass>{gap}</Contents>"
        for name in names
    )
    declaration = draw(st.sampled_from(
        ["", '<?xml version="1.0" encoding="UTF-8"?>\n', '<?xml version="1.0"?>']))
    xmlns = draw(st.sampled_from(
        ["", ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"']))
    body = (
        f"{declaration}<ListBucketResult{xmlns}>{gap}<Name>b&amp;</Name>{gap}"
        f"<Prefix>{draw(escaped(draw(keys)))}</Prefix>{gap}<KeyCount>{len(names)}</KeyCount>"
        f"{gap}<MaxKeys>1000</MaxKeys>{gap}<IsTruncated>{str(truncated).lower()}"
        f"</IsTruncated>{contents}{gap}</ListBucketResult>{gap}"
    )
    return body.encode("utf-8"), names, truncated


@settings(max_examples=400, deadline=None)
@given(listings())
def test_listing_keys_reads_what_elementtree_reads(listing: tuple[bytes, list[str], bool]) -> None:
    body, names, truncated = listing
    assert listing_keys(body) == referee(body)
    # Line ends inside a key arrive as \n unless escaped as &#13; (XML's normalisation).
    assert len(listing_keys(body)[0]) == len(names)
    assert listing_keys(body)[1] is truncated


@settings(max_examples=400, deadline=None)
@given(listings(), st.data())
def test_a_damaged_listing_is_refused_or_read_as_elementtree_reads_it(
    listing: tuple[bytes, list[str], bool], data: st.DataObject
) -> None:
    body = listing[0]
    at = data.draw(st.integers(0, len(body)))
    cut = data.draw(st.integers(0, 12))
    insert = data.draw(st.sampled_from(
        [b"", b"<", b"&", b"&nbsp;", b"<![CDATA[x]]>", b"<!-- c -->", b"</Contents>",
         b"<Contents>", b"<Key>k</Key>", b"<s3:Key>", b"\x00", b"\xff", b"&#0;", b"]]>"]))
    damaged = body[:at] + insert + body[at + cut:]
    try:
        ours = listing_keys(damaged)
    except ValueError:
        return  # refused: the paginator reads it
    try:
        expected = referee(damaged)
    except ElementTree.ParseError:
        return  # not XML at all: only S3 could say what it meant
    except ValueError:
        pytest.fail("read a listing whose root is not ListBucketResult")
    assert ours == expected


@pytest.mark.parametrize("body", [
    b"<ListBucketResult><Contents><Key><![CDATA[a<b]]></Key></Contents></ListBucketResult>",
    b"<ListBucketResult><!-- x --><Contents><Key>a</Key></Contents></ListBucketResult>",
    b"<ListBucketResult><Contents><Key>a&b</Key></Contents></ListBucketResult>",
    b"<ListBucketResult><Contents><Key>a&nbsp;</Key></Contents></ListBucketResult>",
    b"<ListBucketResult><Contents><Key>&#0;</Key></Contents></ListBucketResult>",
    b"<ListBucketResult><Contents><Key>a</Key></Contents>",
    b"<ListBucketResult><Contents><Key>a</Key></ListBucketResult>",
    b"<ListBucketResult><Contents><Key>a</Key><Key>b</Key></Contents></ListBucketResult>",
    b"<s3:ListBucketResult xmlns:s3='x'></s3:ListBucketResult>",
    b'<?xml version="1.0" encoding="ISO-8859-1"?><ListBucketResult></ListBucketResult>',
    b"<Error><Code>AccessDenied</Code></Error>",
    b"\xff<ListBucketResult></ListBucketResult>",
])
def test_what_is_not_a_plain_listing_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):  # UnicodeDecodeError is one too
        listing_keys(body)
