"""The VF <-> PF mailbox codec."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.errors import ParseError, UsageError
from ipsec_offload.wire.config import Algorithm, SaStats, Tlv, TlvType
from ipsec_offload.wire.mailbox import (
    DEL_SAS_MAX,
    MAILBOX_MAX,
    CryptoState,
    DelSas,
    DelSasResult,
    MailboxMessage,
    MbxOpcode,
    MbxStatus,
    SaRead,
    SaUpdate,
    VfCaps,
    build_mailbox,
    decode_crypto_event,
    decode_del_sas,
    decode_del_sas_result,
    decode_handle,
    decode_handle_tlvs,
    decode_sa_read,
    decode_sa_update,
    decode_vf_caps,
    encode_crypto_event,
    encode_del_sas,
    encode_del_sas_result,
    encode_handle,
    encode_handle_tlvs,
    encode_sa_read,
    encode_sa_update,
    encode_vf_caps,
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
        (bytes.fromhex("01 0d 00 00 00000001 0000 0000"), "opcode"),
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
        build_mailbox(MailboxMessage(0x0D, 1))
    with pytest.raises(UsageError):
        encode_handle(-1)


# -- virtchnl inline IPsec's messages: each against hand-written bytes ------------------------

CAPS = VfCaps(
    crypto=True,
    esn=True,
    quota=128,
    held=3,
    max_sas=4096,
    max_replay_window=4096,
    algorithms=(Algorithm.AES_GCM_128, Algorithm.AES_GCM_256),
)
STATS = SaStats(10, 1500, (0, 1, 0, 0, 2))


@pytest.mark.parametrize(
    ("encode", "decode", "value", "body"),
    [
        (
            encode_vf_caps,
            decode_vf_caps,
            CAPS,
            "03 02 0000 00000080 00000003 00001000 00001000 01 02",
        ),
        (
            encode_vf_caps,
            decode_vf_caps,
            VfCaps(False, True, 4, 0, 64, 128, ()),
            "02 00 0000 00000004 00000000 00000040 00000080",
        ),
        (
            encode_sa_update,
            decode_sa_update,
            SaUpdate(7, 0x1_0000_0005),
            "00000007 00000001 00000005",
        ),
        (encode_del_sas, decode_del_sas, DelSas((7, 9)), "00 02 0000 00000007 00000009"),
        (encode_del_sas, decode_del_sas, DelSas(all_sas=True), "01 00 0000"),
        (
            encode_del_sas_result,
            decode_del_sas_result,
            DelSasResult(1, (MbxStatus.SUCCESS, MbxStatus.NOT_FOUND)),
            "0001 02 00 00 02",
        ),
        (encode_del_sas_result, decode_del_sas_result, DelSasResult(5), "0005 00 00"),
        (
            encode_sa_read,
            decode_sa_read,
            SaRead(5, STATS),
            "00000005 000000000000000a 00000000000005dc 0000000000000000 0000000000000001"
            " 0000000000000000 0000000000000000 0000000000000002",
        ),
        (encode_crypto_event, decode_crypto_event, CryptoState.ON, "01"),
        (encode_crypto_event, decode_crypto_event, CryptoState.OFF, "00"),
    ],
)
def test_new_bodies_against_known_bytes(
    encode: Callable[[Any], bytes], decode: Callable[[bytes], object], value: object, body: str
) -> None:
    assert encode(value) == bytes.fromhex(body)
    assert decode(bytes.fromhex(body)) == value


def test_new_messages_against_known_bytes() -> None:
    get_caps = MailboxMessage(MbxOpcode.GET_CAPS, 4)
    assert build_mailbox(get_caps) == bytes.fromhex("01 08 00 00 00000004 0000 0000")
    busy = MailboxMessage(MbxOpcode.READ_SA | MbxOpcode.REPLY, 4, b"", MbxStatus.FIFO_FULL)
    assert build_mailbox(busy) == bytes.fromhex("01 8b 69 00 00000004 0000 0000")
    event = bytes.fromhex("01 0c 00 00 00000002 0001 0000 00")
    message = parse_mailbox(event)
    assert message.opcode == MbxOpcode.EVENT_CRYPTO
    assert decode_crypto_event(message.body) == CryptoState.OFF
    delete_all = bytes.fromhex("01 0a 00 00 00000009 0004 0000 01 00 0000")
    assert decode_del_sas(parse_mailbox(delete_all).body) == DelSas(all_sas=True)


def test_status_names_carry_linux_errnos() -> None:
    assert {s.name: int(s) for s in MbxStatus} == {
        "SUCCESS": 0,
        "VF_DOWN": errno.EPERM,
        "NOT_FOUND": errno.ENOENT,
        "NOT_PERMITTED": errno.EACCES,
        "NOT_READY": errno.EBUSY,
        "EXISTS": errno.EEXIST,
        "INVALID_PARAMS": errno.EINVAL,
        "NO_MEM": errno.ENOSPC,
        "TOO_BIG": errno.EMSGSIZE,
        "UNSUPPORTED": errno.EOPNOTSUPP,
        "FIFO_FULL": errno.ENOBUFS,
        "TIMED_OUT": errno.ETIMEDOUT,
    }


@pytest.mark.parametrize(
    ("decode", "body", "what", "offset"),
    [
        (decode_vf_caps, "03 02 0000 00000080 00000003 00001000 000010", "shorter", 12),
        (decode_vf_caps, "03 02 0000 00000080 00000003 00001000 00001000 01 02 01", "count", 13),
        (decode_vf_caps, "07 02 0000 00000080 00000003 00001000 00001000 01 02", "flags", 12),
        (decode_vf_caps, "03 02 0001 00000080 00000003 00001000 00001000 01 02", "reserved", 14),
        (decode_vf_caps, "03 02 0000 00000080 00000003 00001000 00001000 01 03", "algorithm", 33),
        (decode_sa_update, "00000007 00000001 000005", "UPDATE_SA body", 12),
        (decode_sa_update, "00000007 00000001 00000005 00", "UPDATE_SA body", 12),
        (decode_del_sas, "00 01 00", "shorter", 12),
        (decode_del_sas, "00 01 0000 00000007 00", "DEL_SAS body", 12),
        (decode_del_sas, "00 02 0000 00000007", "DEL_SAS body", 12),
        (decode_del_sas, "02 01 0000 00000007", "flags", 12),
        (decode_del_sas, "00 01 0001 00000007", "reserved", 14),
        (decode_del_sas, "01 01 0000 00000007", "count", 13),  # ALL and a handle
        (decode_del_sas, "00 00 0000", "count", 13),  # neither
        (decode_del_sas, "00 7d 0000" + "00000001" * 125, "count", 13),  # beyond DEL_SAS_MAX
        (decode_del_sas, "00 03 0000 00000007 00000009 00000007", "twice", 24),
        (decode_del_sas_result, "0001 01", "shorter", 12),
        (decode_del_sas_result, "0001 01 01 00", "reserved", 15),
        (decode_del_sas_result, "0001 02 00 00", "count", 14),
        (decode_del_sas_result, "0001 01 00 03", "status", 16),
        (decode_del_sas_result, "0002 02 00 00 02", "removed", 12),
        (decode_sa_read, "00000005" + "00" * 55, "READ_SA reply body", 12),
        (decode_sa_read, "00000005" + "00" * 57, "READ_SA reply body", 12),
        (decode_crypto_event, "", "EVENT_CRYPTO body", 12),
        (decode_crypto_event, "0100", "EVENT_CRYPTO body", 12),
        (decode_crypto_event, "02", "crypto state", 12),
    ],
)
def test_new_bodies_malformed(
    decode: Callable[[bytes], object], body: str, what: str, offset: int
) -> None:
    with pytest.raises(ParseError, match=what) as caught:
        decode(bytes.fromhex(body))
    assert caught.value.offset == offset


@pytest.mark.parametrize(
    ("encode", "value"),
    [
        (encode_del_sas, DelSas()),
        (encode_del_sas, DelSas((1,), all_sas=True)),
        (encode_del_sas, DelSas((1, 1))),
        (encode_del_sas, DelSas(tuple(range(DEL_SAS_MAX + 1)))),
        (encode_del_sas, DelSas(tuple(range(256)))),
        (encode_del_sas, DelSas((-1,))),
        (encode_del_sas_result, DelSasResult(2, (MbxStatus.SUCCESS,))),
        (encode_del_sas_result, DelSasResult(1 << 16)),
        (encode_sa_update, SaUpdate(1, 1 << 64)),
        (encode_sa_update, SaUpdate(1 << 32, 1)),
        (encode_vf_caps, replace(CAPS, quota=-1)),
        (encode_vf_caps, replace(CAPS, algorithms=(3,))),  # type: ignore[arg-type]
        (encode_sa_read, SaRead(1, SaStats(1, 1, (0, 0, 0, 0)))),  # type: ignore[arg-type]
        (encode_sa_read, SaRead(1, SaStats(-1, 1, (0, 0, 0, 0, 0)))),
        (encode_crypto_event, 2),
    ],
)
def test_new_encoders_refuse_what_no_decoder_takes(
    encode: Callable[[Any], bytes], value: object
) -> None:
    with pytest.raises(UsageError):
        encode(value)


u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)


@given(
    st.builds(
        VfCaps,
        crypto=st.booleans(),
        esn=st.booleans(),
        quota=u32,
        held=u32,
        max_sas=u32,
        max_replay_window=u32,
        algorithms=st.lists(st.sampled_from(Algorithm), max_size=8).map(tuple),
    ),
    st.builds(SaUpdate, u32, u64),
    st.one_of(
        st.lists(u32, min_size=1, max_size=DEL_SAS_MAX, unique=True).map(
            lambda h: DelSas(tuple(h))
        ),
        st.just(DelSas(all_sas=True)),
    ),
    st.builds(SaRead, u32, st.builds(SaStats, u64, u64, st.tuples(u64, u64, u64, u64, u64))),
)
def test_new_bodies_round_trip(
    caps: VfCaps, update: SaUpdate, delete: DelSas, read: SaRead
) -> None:
    assert decode_vf_caps(encode_vf_caps(caps)) == caps
    assert decode_sa_update(encode_sa_update(update)) == update
    assert decode_del_sas(encode_del_sas(delete)) == delete
    assert decode_sa_read(encode_sa_read(read)) == read
    assert len(build_mailbox(MailboxMessage(MbxOpcode.DEL_SAS, 1, encode_del_sas(delete)))) <= 512


@given(st.binary(max_size=80))
def test_new_bodies_from_random_bytes_give_parse_errors_only(body: bytes) -> None:
    for decode in (
        decode_vf_caps,
        decode_sa_update,
        decode_del_sas,
        decode_del_sas_result,
        decode_sa_read,
        decode_crypto_event,
    ):
        with contextlib.suppress(ParseError):
            decode(body)
