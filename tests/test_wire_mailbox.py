"""The VF <-> PF mailbox codec."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import Tlv, TlvType
from ipsec_offload.wire.mailbox import (
    MAILBOX_MAX,
    MailboxMessage,
    MbxOpcode,
    build_mailbox,
    decode_handle,
    decode_handle_tlvs,
    encode_handle,
    encode_handle_tlvs,
    parse_mailbox,
    peek_msg_id,
)

opcodes = st.sampled_from(
    [op for op in MbxOpcode if op != MbxOpcode.REPLY]
    + [op | MbxOpcode.REPLY for op in MbxOpcode if op != MbxOpcode.REPLY]
)
messages = st.builds(
    MailboxMessage,
    opcode=opcodes,
    msg_id=st.integers(0, 0xFFFFFFFF),
    body=st.binary(max_size=MAILBOX_MAX - 12),
    status=st.integers(0, 255),
)


@given(messages)
def test_round_trip(message: MailboxMessage) -> None:
    assert parse_mailbox(build_mailbox(message)) == message


@given(st.binary(max_size=600))
def test_random_bytes_give_parse_errors_only(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_mailbox(data)


@given(messages)
def test_every_truncation_is_a_parse_error(message: MailboxMessage) -> None:
    data = build_mailbox(message)
    for end in range(len(data)):
        with pytest.raises(ParseError):
            parse_mailbox(data[:end])


def test_known_bytes() -> None:
    message = MailboxMessage(MbxOpcode.DEL_SA, 3, encode_handle(7))
    assert build_mailbox(message) == bytes.fromhex("01 03 00 00 00000003 0004 0000 00000007")
    reply = MailboxMessage(MbxOpcode.ADD_SA | MbxOpcode.REPLY, 0x01020304, b"", 28)
    assert build_mailbox(reply) == bytes.fromhex("01 82 1c 00 01020304 0000 0000")


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (bytes.fromhex("02 01 00 00 00000001 0000 0000"), "version"),
        (bytes.fromhex("01 09 00 00 00000001 0000 0000"), "opcode"),
        (bytes.fromhex("01 01 00 01 00000001 0000 0000"), "reserved"),
        (bytes.fromhex("01 01 00 00 00000001 0000 0001"), "reserved"),
        (bytes.fromhex("01 01 00 00 00000001 0002 0000 00"), "length"),
        (bytes.fromhex("01 01 00 00 00000001 0000 0000") + bytes(501), "mailbox"),
    ],
)
def test_malformed_fields(data: bytes, what: str) -> None:
    with pytest.raises(ParseError, match=what):
        parse_mailbox(data)


def test_bodies() -> None:
    tlvs = (Tlv(TlvType.SPI, bytes.fromhex("00000101")),)
    assert decode_handle_tlvs(encode_handle_tlvs(9, tlvs)) == (9, tlvs)
    assert decode_handle(encode_handle(0xFFFFFFFF)) == 0xFFFFFFFF
    with pytest.raises(ParseError):
        decode_handle(b"\x00\x01")
    with pytest.raises(ParseError):
        decode_handle_tlvs(b"\x00")
    with pytest.raises(ParseError):
        decode_handle_tlvs(encode_handle(1) + b"\x00\x03\x00\x09")  # truncated TLV
    assert peek_msg_id(bytes.fromhex("ff ff ff ff 0000002a")) == 42
    assert peek_msg_id(b"\x01") == 0


def test_build_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(UsageError, match="512"):
        build_mailbox(MailboxMessage(MbxOpcode.ADD_SA, 1, bytes(MAILBOX_MAX)))
    with pytest.raises(UsageError, match="opcode"):
        build_mailbox(MailboxMessage(0x09, 1))
    with pytest.raises(UsageError):
        encode_handle(-1)
