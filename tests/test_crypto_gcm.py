"""AES-GCM ESP (RFC 4106): published known answers, tamper detection, misuse, interop."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_offload.crypto import EspAead, aad, key_material_length
from ipsec_offload.crypto.gcm import ICV_LEN, IV_LEN, SALT_LEN
from ipsec_offload.errors import AuthenticationError, UsageError


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


@dataclass(frozen=True, slots=True)
class EspVector:
    """One AES-GCM ESP test case: key material is key || salt, AAD as published."""

    name: str
    algorithm: int
    key: bytes
    salt: bytes
    spi: int
    seq: int
    esn: bool
    iv: bytes
    plaintext: bytes
    aad: bytes
    sealed: bytes

    @property
    def key_material(self) -> bytes:
        return self.key + self.salt


# Source of every vector below: D. McGrew, "Test Cases for the use of Galois/Counter Mode (GCM)
# and Galois Message Authentication Code (GMAC) in IPsec ESP", draft-mcgrew-gcm-test-01
# (March 2009), section 4 "Test Cases". Each case there lists key, SPI, seq, nonce
# (= salt || explicit IV), plaintext, AAD and ctext+tag; cases are named here by SPI and seq.
VECTORS = [
    # draft-mcgrew-gcm-test-01 section 4: AES-128, SPI 0x00004321, 64-bit seq
    # 0x8765432100000000 (ESN, 12-byte AAD), nonce 2e443b68 || 4956ed7e3b244cfe.
    EspVector(
        name="aes128-esn-spi00004321",
        algorithm=1,
        key=_hex("4c80cdefbb5d10da906ac73c3613a634"),
        salt=_hex("2e443b68"),
        spi=0x00004321,
        seq=0x8765432100000000,
        esn=True,
        iv=_hex("4956ed7e3b244cfe"),
        plaintext=_hex(
            """45000048699a000080114db7c0a80102 c0a801010a9bf15638d3010000010000
            00000000045f736970045f7564700373 69700963796265726369747902646b00
            0021000101020201"""
        ),
        aad=_hex("00004321 87654321 00000000"),
        sealed=_hex(
            """fecf537e729d5b07dc30df528dd22b76 8d1b98736696a6fd348509fa13ceac34
            cfa2436f14a3f3cf65925bf1f4a13c5d 15b21e1884f5ff6247aeabb786b93bce
            61bc17d768fd9732459018148f6cbe72 2fd04796562dfdb4"""
        ),
    ),
    # draft-mcgrew-gcm-test-01 section 4: AES-128, SPI 0x0000a5f8, 32-bit seq 0x0000000a,
    # nonce cafebabe || facedbaddecaf888.
    EspVector(
        name="aes128-spi0000a5f8",
        algorithm=1,
        key=_hex("feffe9928665731c6d6a8f9467308308"),
        salt=_hex("cafebabe"),
        spi=0x0000A5F8,
        seq=0x0000000A,
        esn=False,
        iv=_hex("facedbaddecaf888"),
        plaintext=_hex(
            """4500003e698f000080114dccc0a80102 c0a801010a980035002a2343b2d00100
            00010000000000000373697009637962 65726369747902646b00000100010001"""
        ),
        aad=_hex("0000a5f8 0000000a"),
        sealed=_hex(
            """deb22cd9b07c72c16e3a65beeb8df304 a5a5897d33ae530f1ba76d5d114d2a5c
            3de81827c10e9a4f51330d0eec416642 cfbb85a5b47e48a4ec3b9ba95d918bd1
            83b70d3aa8bc6ee4c309e9d85a41ad4a"""
        ),
    ),
    # draft-mcgrew-gcm-test-01 section 4: AES-256, SPI 0x4a2cbfe3, 32-bit seq 0x00000002,
    # nonce 11223344 || 0102030405060708.
    EspVector(
        name="aes256-spi4a2cbfe3",
        algorithm=2,
        key=_hex("abbccddef00112233445566778899aab abbccddef00112233445566778899aab"),
        salt=_hex("11223344"),
        spi=0x4A2CBFE3,
        seq=0x00000002,
        esn=False,
        iv=_hex("0102030405060708"),
        plaintext=_hex(
            """4500003069a6400080062690c0a80102 9389155e0a9e008b2dc57ee000000000
            7002400020bf0000020405b401010402 01020201"""
        ),
        aad=_hex("4a2cbfe3 00000002"),
        sealed=_hex(
            """ff425c9b724599df7a3bcd510194e00d 6a78107f1b0b1cbf06efae9d65a5d763
            748a637985771d347f0545659f14e99d ef842d8eb335f4eecfdbf831824b4c49
            15956c96"""
        ),
    ),
    # draft-mcgrew-gcm-test-01 section 4: AES-256, SPI 0x17405e67, 64-bit seq
    # 0x156f3126dd0db99b (ESN), nonce 73616c74 || 616e640169766563.
    EspVector(
        name="aes256-esn-spi17405e67",
        algorithm=2,
        key=_hex("abbccddef00112233445566778899aab abbccddef00112233445566778899aab"),
        salt=_hex("73616c74"),
        spi=0x17405E67,
        seq=0x156F3126DD0DB99B,
        esn=True,
        iv=_hex("616e640169766563"),
        plaintext=_hex(
            """45080028732c00004006e9f90a010612 0a01038f06b88023dd6bafbecb712602
            50101f646d540001"""
        ),
        aad=_hex("17405e67 156f3126 dd0db99b"),
        sealed=_hex(
            """f2d69ecdbd5a0d5b8d5ef38bad4da58d 1f278fde98ef67549d524a3018d9a57f
            f4d3a31ce673119e451626c2415771e3 b7eebca614c89b35"""
        ),
    ),
    # draft-mcgrew-gcm-test-01 section 4: AES-256, SPI 0x796b6963, 64-bit seq
    # 0xffffffffffffffff (ESN, the last sequence number), nonce 7475726e || 333021696765746d.
    EspVector(
        name="aes256-esn-spi796b6963-lastseq",
        algorithm=2,
        key=_hex("6c6567616c697a656d6172696a75616e 61616e64646f69746265666f72656961"),
        salt=_hex("7475726e"),
        spi=0x796B6963,
        seq=0xFFFFFFFFFFFFFFFF,
        esn=True,
        iv=_hex("333021696765746d"),
        plaintext=_hex(
            """45000030da3a00008001df3bc0a80005 c0a800010800c6cd0200070061626364
            65666768696a6b6c6d6e6f7071727374 01020201"""
        ),
        aad=_hex("796b6963 ffffffff ffffffff"),
        sealed=_hex(
            """f97ab2aa356d8edce17644ac8c78e25d d24dedbb29ebf1b64a274b39b49c3a86
            4cd3d78ca4ae68a32b42458fb57dbe82 1dcc63b9d0937ba2945f669368661a32
            9fb4c053"""
        ),
    ),
    # draft-mcgrew-gcm-test-01 section 4: AES-128, SPI 0x335467ae, 32-bit seq 0xffffffff,
    # a 4-byte plaintext, nonce d9664267 || 43457e9182443bc6.
    EspVector(
        name="aes128-spi335467ae-short",
        algorithm=1,
        key=_hex("7d773d00c144c525ac619d18c84a3f47"),
        salt=_hex("d9664267"),
        spi=0x335467AE,
        seq=0xFFFFFFFF,
        esn=False,
        iv=_hex("43457e9182443bc6"),
        plaintext=_hex("01020201"),
        aad=_hex("335467ae ffffffff"),
        sealed=_hex("437f866bcb3f699fe9b0822bac961c45 04bef270"),
    ),
    # draft-mcgrew-gcm-test-01 section 4: AES-128, SPI 0x00000100, 64-bit seq 1 (ESN, high
    # half 0), nonce decaf888 || cafedebaceface74.
    EspVector(
        name="aes128-esn-spi00000100",
        algorithm=1,
        key=_hex("abbccddef00112233445566778899aab"),
        salt=_hex("decaf888"),
        spi=0x00000100,
        seq=0x0000000000000001,
        esn=True,
        iv=_hex("cafedebaceface74"),
        plaintext=_hex(
            """4500004933ba00007f119106c3fb1d10 c2b1d326c02831ce0035dd7b800302d5
            00004e20001e8c18d75b81dc91baa047 6b91b924b280389d92c963bac046ec95
            9b6266c04722b14923010101"""
        ),
        aad=_hex("00000100 00000000 00000001"),
        sealed=_hex(
            """18a6fd42f72cbf4ab2a2ea901f73d814 e3e7f243d95412e1c349c1d2fbec168f
            9190feebaf2cb01984e65863965d7472 b79da345e0e780191f0d2f0e0f496c22
            6f2127b27db35724e7845d68651f57e6 5f354f75ff17015769623436"""
        ),
    ),
]


@pytest.fixture(params=VECTORS, ids=lambda v: v.name)
def vector(request: pytest.FixtureRequest) -> EspVector:
    result: EspVector = request.param
    return result


def test_vectors_cover_both_key_sizes_and_esn() -> None:
    assert {v.algorithm for v in VECTORS} == {1, 2}
    assert {(v.algorithm, v.esn) for v in VECTORS} == {(1, False), (1, True), (2, False), (2, True)}


def test_aad_matches_published(vector: EspVector) -> None:
    assert aad(vector.spi, vector.seq, vector.esn) == vector.aad


def test_seal_matches_published(vector: EspVector) -> None:
    aead = EspAead(vector.algorithm, vector.key_material)
    sealed = aead.seal(vector.spi, vector.seq, vector.esn, vector.iv, vector.plaintext)
    assert sealed == vector.sealed
    assert len(sealed) == len(vector.plaintext) + ICV_LEN


def test_open_matches_published(vector: EspVector) -> None:
    aead = EspAead(vector.algorithm, vector.key_material)
    assert aead.open(vector.spi, vector.seq, vector.esn, vector.iv, vector.sealed) == (
        vector.plaintext
    )


def test_every_bit_flip_fails_authentication(vector: EspVector) -> None:
    aead = EspAead(vector.algorithm, vector.key_material)
    for index in range(len(vector.sealed)):
        tampered = bytearray(vector.sealed)
        tampered[index] ^= 0x01 << (index % 8)
        with pytest.raises(AuthenticationError):
            aead.open(vector.spi, vector.seq, vector.esn, vector.iv, bytes(tampered))


def test_wrong_header_fields_fail_authentication(vector: EspVector) -> None:
    aead = EspAead(vector.algorithm, vector.key_material)
    v = vector
    wrong_iv = bytes([v.iv[0] ^ 0x80]) + v.iv[1:]
    cases = [
        (v.spi ^ 1, v.seq, v.esn, v.iv),
        (v.spi, v.seq ^ 1, v.esn, v.iv),
        (v.spi, v.seq, v.esn, wrong_iv),
        # The AAD is 8 bytes without ESN and 12 with it, so a wrong ESN flag always fails.
        (v.spi, v.seq, not v.esn, v.iv),
    ]
    if v.esn:
        # The high half of an ESN is authenticated though never sent: a wrong guess fails.
        cases.append((v.spi, v.seq ^ (1 << 32), v.esn, v.iv))
    for spi, seq, esn, iv in cases:
        with pytest.raises(AuthenticationError):
            aead.open(spi, seq, esn, iv, v.sealed)


def test_high_bits_ignored_without_esn() -> None:
    """Without ESN only seq_lo is in the AAD, so the high half of ``seq`` does not matter."""
    v = VECTORS[1]
    aead = EspAead(v.algorithm, v.key_material)
    assert aead.seal(v.spi, v.seq | (7 << 32), False, v.iv, v.plaintext) == v.sealed


def test_wrong_key_fails_authentication(vector: EspVector) -> None:
    other = bytes([vector.key[0] ^ 1]) + vector.key[1:] + vector.salt
    with pytest.raises(AuthenticationError):
        EspAead(vector.algorithm, other).open(
            vector.spi, vector.seq, vector.esn, vector.iv, vector.sealed
        )
    wrong_salt = vector.key + bytes(b ^ 0xFF for b in vector.salt)
    with pytest.raises(AuthenticationError):
        EspAead(vector.algorithm, wrong_salt).open(
            vector.spi, vector.seq, vector.esn, vector.iv, vector.sealed
        )


@pytest.mark.parametrize("length", [0, 1, 15, 16])
def test_short_or_empty_input_fails_authentication(length: int) -> None:
    aead = EspAead(1, bytes(20))
    with pytest.raises(AuthenticationError, match="did not verify"):
        aead.open(1, 1, False, bytes(8), bytes(length))


def test_empty_plaintext_round_trips() -> None:
    aead = EspAead(2, bytes(range(36)))
    sealed = aead.seal(5, 6, True, bytes(8), b"")
    assert len(sealed) == ICV_LEN
    assert aead.open(5, 6, True, bytes(8), sealed) == b""


class _Algorithm(IntEnum):
    """Stands in for wire.config.Algorithm: the crypto layer takes its int values."""

    AES_GCM_128 = 1
    AES_GCM_256 = 2


def test_accepts_intenum_algorithm() -> None:
    v = VECTORS[2]
    aead = EspAead(_Algorithm.AES_GCM_256, v.key_material)
    assert aead.algorithm is _Algorithm.AES_GCM_256
    assert aead.seal(v.spi, v.seq, v.esn, v.iv, v.plaintext) == v.sealed
    assert key_material_length(_Algorithm.AES_GCM_128) == 20
    assert key_material_length(_Algorithm.AES_GCM_256) == 36


def test_repr_hides_key() -> None:
    aead = EspAead(1, bytes.fromhex("11" * 20))
    assert "11" not in repr(aead)


@pytest.mark.parametrize(
    ("algorithm", "length"), [(1, 16), (1, 19), (1, 21), (1, 36), (2, 20), (2, 32), (2, 0)]
)
def test_wrong_key_material_length_says_what_to_fix(algorithm: int, length: int) -> None:
    expected = key_material_length(algorithm)
    with pytest.raises(UsageError, match=rf"must be {expected} bytes .*salt.*got {length}"):
        EspAead(algorithm, bytes(length))


@pytest.mark.parametrize("algorithm", [0, 3, -1, 255])
def test_unknown_algorithm(algorithm: int) -> None:
    with pytest.raises(UsageError, match="AES-GCM-128"):
        EspAead(algorithm, bytes(20))
    with pytest.raises(UsageError):
        key_material_length(algorithm)


@pytest.mark.parametrize("iv_len", [0, 7, 9, 12])
def test_wrong_iv_length(iv_len: int) -> None:
    aead = EspAead(1, bytes(20))
    with pytest.raises(UsageError, match="8 bytes"):
        aead.seal(1, 1, False, bytes(iv_len), b"x")
    with pytest.raises(UsageError, match="8 bytes"):
        aead.open(1, 1, False, bytes(iv_len), bytes(17))


@pytest.mark.parametrize(
    ("spi", "seq", "esn"),
    [(-1, 1, False), (1 << 32, 1, False), (1, -1, True), (1, 1 << 64, True)],
)
def test_out_of_range_header_fields(spi: int, seq: int, esn: bool) -> None:
    aead = EspAead(1, bytes(20))
    with pytest.raises(UsageError, match="unsigned"):
        aead.seal(spi, seq, esn, bytes(8), b"x")
    with pytest.raises(UsageError, match="unsigned"):
        aead.open(spi, seq, esn, bytes(8), bytes(17))
    with pytest.raises(UsageError, match="unsigned"):
        aad(spi, seq, esn)


def test_constants() -> None:
    assert (SALT_LEN, IV_LEN, ICV_LEN) == (4, 8, 16)


@given(
    algorithm=st.sampled_from([1, 2]),
    key_seed=st.binary(min_size=36, max_size=36),
    spi=st.integers(0, 0xFFFF_FFFF),
    seq=st.integers(0, 0xFFFF_FFFF_FFFF_FFFF),
    esn=st.booleans(),
    iv=st.binary(min_size=8, max_size=8),
    plaintext=st.binary(max_size=300),
)
def test_round_trip(
    algorithm: int, key_seed: bytes, spi: int, seq: int, esn: bool, iv: bytes, plaintext: bytes
) -> None:
    aead = EspAead(algorithm, key_seed[: key_material_length(algorithm)])
    sealed = aead.seal(spi, seq, esn, iv, plaintext)
    assert len(sealed) == len(plaintext) + ICV_LEN
    assert aead.open(spi, seq, esn, iv, sealed) == plaintext


@pytest.mark.interop
@pytest.mark.parametrize(("algorithm", "esn"), [(1, False), (1, True), (2, False), (2, True)])
def test_interop_with_scapy(algorithm: int, esn: bool) -> None:
    """scapy's ESP AES-GCM decrypts what EspAead seals, and the other way round."""
    inet = pytest.importorskip("scapy.layers.inet")
    ipsec = pytest.importorskip("scapy.layers.ipsec")
    key_material = bytes(range(0x40, 0x40 + key_material_length(algorithm)))
    spi, seq = 0x0BADCAFE, (0x12 << 32 | 0x345) if esn else 0x345
    iv = seq.to_bytes(8, "big")
    sa = ipsec.SecurityAssociation(
        ipsec.ESP,
        spi=spi,
        crypt_algo="AES-GCM",
        crypt_key=key_material,
        auth_algo="NULL",
        esn_en=esn,
        esn=seq >> 32,
    )
    sa.seq_num = seq & 0xFFFF_FFFF
    inner = inet.IP(src="192.0.2.1", dst="198.51.100.2") / inet.UDP(sport=1000, dport=2000)
    inner = inner / (b"payload" * 5)
    esp = bytes(sa.encrypt(inner, iv=iv)[ipsec.ESP])
    assert esp[:8] == spi.to_bytes(4, "big") + (seq & 0xFFFF_FFFF).to_bytes(4, "big")
    assert esp[8:16] == iv

    aead = EspAead(algorithm, key_material)
    plaintext = aead.open(spi, seq, esn, iv, esp[16:])
    assert aead.seal(spi, seq, esn, iv, plaintext) == esp[16:]

    # The other way: seal a transport-mode UDP payload (RFC 4303 2.4 trailer, next header 17)
    # under the next sequence number and let scapy decrypt it.
    udp = bytes(inet.UDP(sport=3000, dport=4000) / b"from EspAead")
    pad_len = -(len(udp) + 2) % 4
    trailer = bytes(range(1, pad_len + 1)) + bytes([pad_len, 17])
    seq += 1
    iv = seq.to_bytes(8, "big")
    header = spi.to_bytes(4, "big") + (seq & 0xFFFF_FFFF).to_bytes(4, "big") + iv
    sealed = header + aead.seal(spi, seq, esn, iv, udp + trailer)
    outer = inet.IP(src="192.0.2.1", dst="198.51.100.2", proto=50) / ipsec.ESP(sealed)
    decrypted = sa.decrypt(inet.IP(bytes(outer)))
    assert bytes(decrypted[inet.UDP].payload) == b"from EspAead"
