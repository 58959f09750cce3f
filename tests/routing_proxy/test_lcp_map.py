from __future__ import annotations

from pathlib import Path

import pytest

from routing_proxy.lcp_map import LcpMapError, Leaf, load_lcp_map


def test_reads_the_incumbents_format_in_order(tmp_path: Path) -> None:
    path = tmp_path / "lcp_map.json"
    path.write_text('{"C12": {"host": "localhost", "port": 9004}, "C11": {"host": "10.0.0.2", "port": 9003}}')
    assert load_lcp_map(path) == [Leaf("C12", "localhost", 9004), Leaf("C11", "10.0.0.2", 9003)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "non-empty JSON object"),
        ("{}", "non-empty JSON object"),
        ('{"C11": 9003}', "'C11' must be an object"),
        ('{"C11": {"port": 9003}}', "'C11' needs a non-empty string host"),
        ('{"C11": {"host": "h"}}', "'C11' needs a port"),
        ('{"C11": {"host": "h", "port": 70000}}', "needs a port between 1 and 65535"),
        ('{"C11": {"host": "h", "port": true}}', "needs a port"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "lcp_map.json"
    path.write_text(text)
    with pytest.raises(LcpMapError, match=message):
        load_lcp_map(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LcpMapError, match="cannot read lcp map"):
        load_lcp_map(tmp_path / "nope.json")
