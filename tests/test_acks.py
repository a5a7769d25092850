"""The PutMedia acknowledgement stream parser (edge_agent/sinks/kvs/acks.py)."""

from __future__ import annotations

from edge_agent.sinks.kvs.acks import Ack, AckParser, ErrorAction, error_action, error_name

NUMBER = "91343852333181432392682062607743920146264440663"
STREAM = (
    b'{"EventType":"BUFFERING","FragmentTimecode":1700000000000,"FragmentNumber":"'
    + NUMBER.encode()
    + b'"}\n{"EventType":"RECEIVED","FragmentTimecode":1700000000000,"FragmentNumber":"'
    + NUMBER.encode()
    + b'"}\n{"EventType":"PERSISTED","FragmentTimecode":1700000000000,"FragmentNumber":"'
    + NUMBER.encode()
    + b'","Extra":{"nested":[1,2]}}\n{"EventType":"ERROR","FragmentTimecode":1700000002000,'
    b'"FragmentNumber":"' + NUMBER.encode() + b'","ErrorId":4004}\n{"EventType":"IDLE"}\n'
)
EXPECTED = [
    Ack("BUFFERING", 1700000000000, NUMBER),
    Ack("RECEIVED", 1700000000000, NUMBER),
    Ack("PERSISTED", 1700000000000, NUMBER),
    Ack("ERROR", 1700000002000, NUMBER, 4004),
    Ack("IDLE"),
]


def test_every_event_type_with_the_fragment_number_as_a_string() -> None:
    parser = AckParser()
    assert parser.feed(STREAM) == EXPECTED
    assert parser.skipped == 0


def test_acks_split_across_chunks_at_every_byte() -> None:
    for cut in range(1, len(STREAM)):
        parser = AckParser()
        assert parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:]) == EXPECTED, cut


def test_byte_by_byte_and_without_newlines() -> None:
    parser = AckParser()
    got: list[Ack] = []
    for byte in STREAM.replace(b"}\n{", b"}{"):
        got += parser.feed(bytes((byte,)))
    assert got == EXPECTED


def test_a_broken_line_is_skipped_and_counted_and_the_rest_still_parses() -> None:
    parser = AckParser()
    broken = b'{"EventType":"RECEIVED","FragmentTi\nnot json at all\n[1,2]\n'
    assert parser.feed(broken + STREAM) == EXPECTED
    assert parser.skipped == 2  # the broken object, and the text up to the next ack


def test_error_ids_map_to_what_the_uploader_does() -> None:
    assert error_name(4004) == "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS"
    assert error_action(4004) is ErrorAction.REPAIR_TIMESTAMPS
    assert error_action(4006) is ErrorAction.DEAD_LETTER
    assert error_action(4001) is ErrorAction.DEAD_LETTER
    assert error_action(4003) is ErrorAction.RECONNECT
    assert error_action(4501) is ErrorAction.PAUSE
    assert error_action(5000) is ErrorAction.RETRY
    assert error_action(4499) is ErrorAction.DEAD_LETTER  # unknown 4xxx: the fragment's fault
    assert error_action(5999) is ErrorAction.RETRY
