"""The proxy's query parsing skips `parse_qsl` for plain text; both ways must read a query alike."""

from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from routing_proxy.forwarding import _query_pairs

QUERY_TEXT = st.text(alphabet="ab=&;%+2 0x", max_size=24)


@given(QUERY_TEXT)
def test_query_pairs_read_every_query_as_parse_qsl_does(text: str) -> None:
    assert _query_pairs(text) == parse_qsl(text, keep_blank_values=True)


def test_a_device_s_task_query_takes_the_plain_path() -> None:
    assert _query_pairs("job_id=6222570f&&x=") == [("job_id", "6222570f"), ("x", "")]
