/* Opening an inbound ESP frame in C, shared by the compiled fast paths of the agent
 * (agent/_datapath.c) and of the host stack (host/_rxpath.c).
 *
 * Theory of operation: both fast paths work directly on the Python objects their reference
 * paths use, so that the two paths read and write one state, through the objects' slots
 * (pyslots.h); fields of a frame are read in network byte order (wire/byteorder.h). The
 * pieces here are those of RFC 4303 inbound processing that do not depend on whose frame it is:
 *
 *   - `parse_vlans` and `locate_esp`: the L2 header (at most two VLAN tags) and the IPv4
 *     (options allowed, header checksum verified, not a fragment) or IPv6 (ESP the first next
 *     header) packet around an ESP header;
 *   - `replay_ahead` and `replay_slide`: ReplayWindow.check for a number above the window (the
 *     in-order case; every other case is the reference path's), and ReplayWindow.accept for it;
 *   - `aead_call`: EspAead.seal / open through the EspAead's `cryptography` AESGCM object;
 *   - `esp_trailer`: the trailer and padding check of wire.esp.esp_trailer_fields.
 *
 * Every function either finishes or tells its caller the frame is not the common case
 * (-1, no error set) or that Python raised (-1 with an error set, where documented); none
 * of them writes an object except `replay_slide`, which a caller runs once it is sure to
 * finish the frame.
 */
#ifndef IPSEC_OFFLOAD_ESP_OPEN_H
#define IPSEC_OFFLOAD_ESP_OPEN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "pyslots.h"
#include "wire/byteorder.h"

#define ETH_IPV4 0x0800u
#define ETH_IPV6 0x86DDu
#define ETH_VLAN 0x8100u
#define ETH_QINQ 0x88A8u
#define PROTO_ESP 50u
#define ESP_HEADER_LEN 8
#define ESP_IV_LEN 8
#define ICV_LEN 16
#define SALT_LEN 4
#define ESP_TRAILER_LEN 2
#define MAX_VLANS 2

/* -- frames ---------------------------------------------------------------------------- */

/* One frame as a fast path sees it: its L2 header and the ESP packet inside it. */
typedef struct {
    const uint8_t *p;
    Py_ssize_t len;
    unsigned ethertype;   /* the innermost EtherType */
    int nvlans;
    unsigned tpid[MAX_VLANS], vid[MAX_VLANS];
    Py_ssize_t l3;        /* where the IP header starts: the L2 header's length */
    Py_ssize_t esp_start; /* where the ESP header starts */
    Py_ssize_t ip_end;    /* where the IP packet ends */
    Py_ssize_t src_off, dst_off, addr_len; /* the IP addresses */
    unsigned ip_checksum, ip_length;       /* IPv4 only */
} Frame;

/* The VLAN tags from `off` (spec 3: at most two, 802.1Q or 802.1ad) and the EtherType after
 * them; sets f->l3. 0, or -1 when the tags are not the common case. */
static int parse_vlans(Frame *f, Py_ssize_t off) {
    unsigned et = rd16(f->p + off);
    f->nvlans = 0;
    while (et == ETH_VLAN || et == ETH_QINQ) {
        if (f->nvlans == MAX_VLANS || f->len < off + 6)
            return -1;
        f->tpid[f->nvlans] = et;
        f->vid[f->nvlans] = rd16(f->p + off + 2) & 0x0FFF;
        f->nvlans++;
        off += 4;
        et = rd16(f->p + off);
    }
    f->ethertype = et;
    f->l3 = off + 2;
    return 0;
}

/* Find the ESP packet behind the L2 header, as agent._locate_esp does for the shapes the fast
 * paths handle: IPv4 (RFC 791: version, IHL, total length, header checksum; not a fragment)
 * or IPv6 with ESP as its first next header (RFC 8200). `esp_off` >= 0 (Tx) is where the
 * metadata says ESP starts, and the ESP header and IV must fit. 0, or -1 (not handled). */
static int locate_esp(Frame *f, Py_ssize_t esp_off) {
    const uint8_t *ip = f->p + f->l3;
    Py_ssize_t size = f->len - f->l3, offset, ip_len;
    if (size < 1)
        return -1;
    if (f->ethertype == ETH_IPV4 && ip[0] >> 4 == 4) {
        Py_ssize_t header_len = (Py_ssize_t)(ip[0] & 0x0F) * 4;
        uint32_t sum = 0;
        if (size < 20 || header_len < 20 || header_len > size)
            return -1;
        ip_len = rd16(ip + 2);
        if (ip_len < header_len || ip_len > size || ip[9] != PROTO_ESP || rd16(ip + 6) & 0x3FFF)
            return -1;
        for (Py_ssize_t i = 0; i < header_len; i += 2)
            sum += rd16(ip + i);
        if (sum % 0xFFFF) /* RFC 1071: a right checksum makes the sum 0 modulo 0xffff */
            return -1;
        offset = header_len;
        f->src_off = f->l3 + 12;
        f->dst_off = f->l3 + 16;
        f->addr_len = 4;
        f->ip_checksum = rd16(ip + 10);
        f->ip_length = (unsigned)ip_len;
    } else if (f->ethertype == ETH_IPV6 && ip[0] >> 4 == 6) {
        if (size < 40 || ip[6] != PROTO_ESP)
            return -1;
        ip_len = 40 + (Py_ssize_t)rd16(ip + 4);
        if (ip_len > size)
            return -1;
        offset = 40;
        f->src_off = f->l3 + 8;
        f->dst_off = f->l3 + 24;
        f->addr_len = 16;
    } else {
        return -1;
    }
    if (esp_off >= 0 && (esp_off != offset || offset + ESP_HEADER_LEN + ESP_IV_LEN > ip_len))
        return -1;
    if (offset + ESP_HEADER_LEN > ip_len)
        return -1;
    f->esp_start = f->l3 + offset;
    f->ip_end = f->l3 + ip_len;
    return 0;
}

/* -- ReplayWindow and EspAead -------------------------------------------------------------- */

/* The classes ReplayWindow and EspAead, and where their slots are. */
typedef struct {
    PyTypeObject *replay_type, *aead_type; /* strong references */
    Py_ssize_t size, highest, bitmap, mask; /* ReplayWindow */
    Py_ssize_t cipher, salt;                /* EspAead */
} EspTypes;

/* The AESGCM methods `aead_call` calls, interned by `esp_open_ready`. */
static PyObject *s_encrypt, *s_decrypt, *s_encrypt_into, *s_decrypt_into;

/* Intern what this header needs, once, when the including module loads: 0, or -1. */
static int esp_open_ready(void) {
    s_encrypt = PyUnicode_InternFromString("encrypt");
    s_decrypt = PyUnicode_InternFromString("decrypt");
    s_encrypt_into = PyUnicode_InternFromString("encrypt_into");
    s_decrypt_into = PyUnicode_InternFromString("decrypt_into");
    return s_encrypt && s_decrypt && s_encrypt_into && s_decrypt_into ? 0 : -1;
}

/* Fill `t` from the two classes (kept as strong references): 0, or -1 with an error set. */
static int esp_types_init(EspTypes *t, PyTypeObject *replay_type, PyTypeObject *aead_type) {
    if (slot_offset(replay_type, "_size", &t->size) ||
        slot_offset(replay_type, "_highest", &t->highest) ||
        slot_offset(replay_type, "_bitmap", &t->bitmap) ||
        slot_offset(replay_type, "_mask", &t->mask) ||
        slot_offset(aead_type, "_cipher", &t->cipher) ||
        slot_offset(aead_type, "_salt", &t->salt))
        return -1;
    Py_INCREF(replay_type);
    Py_XSETREF(t->replay_type, replay_type);
    Py_INCREF(aead_type);
    Py_XSETREF(t->aead_type, aead_type);
    return 0;
}

static int esp_types_traverse(EspTypes *t, visitproc visit, void *arg) {
    Py_VISIT(t->replay_type);
    Py_VISIT(t->aead_type);
    return 0;
}

static void esp_types_clear(EspTypes *t) {
    Py_CLEAR(t->replay_type);
    Py_CLEAR(t->aead_type);
}

/* Below this many bytes of input the AEAD gets and returns bytes objects, which costs less
 * than the buffer views `*_into` needs; from it up, writing straight into the frame saves a
 * copy and an allocation of the whole packet. */
#define INTO_THRESHOLD 2048

/* The AEAD of EspAead.seal / open (RFC 4106: nonce salt || IV; AAD SPI || seq_lo, or
 * SPI || seq_hi || seq_lo with ESN) on `len` bytes at `data`, the result written to the
 * `into_len` bytes at `into`; `aead` is an EspAead, whose AESGCM does the work. 0, or -1 with
 * an error set (cryptography's InvalidTag when a decryption's ICV does not verify). */
static int aead_call(const EspTypes *t, PyObject *aead, int decrypt, const uint8_t *iv,
                     uint32_t spi, uint64_t seq, int esn, const uint8_t *data, Py_ssize_t len,
                     uint8_t *into, Py_ssize_t into_len) {
    uint8_t nonce[SALT_LEN + ESP_IV_LEN], aad[12];
    PyObject *salt, *cipher, *args[5], *result = NULL;
    Py_ssize_t written = -1;
    salt = slot_get(aead, t->salt);
    cipher = slot_get(aead, t->cipher);
    if (salt == NULL || !PyBytes_CheckExact(salt) || PyBytes_GET_SIZE(salt) != SALT_LEN ||
        cipher == NULL) {
        PyErr_SetString(PyExc_TypeError, "EspAead is not set up (its salt or cipher)");
        return -1;
    }
    memcpy(nonce, PyBytes_AS_STRING(salt), SALT_LEN);
    memcpy(nonce + SALT_LEN, iv, ESP_IV_LEN);
    wr32(aad, spi);
    if (esn)
        wr64(aad + 4, seq);
    else
        wr32(aad + 4, (uint32_t)seq);
    args[0] = Py_NewRef(cipher);
    args[1] = PyBytes_FromStringAndSize((const char *)nonce, sizeof nonce);
    args[3] = PyBytes_FromStringAndSize((const char *)aad, esn ? 12 : 8);
    if (len < INTO_THRESHOLD) {
        args[2] = PyBytes_FromStringAndSize((const char *)data, len);
        args[4] = NULL;
        if (args[1] && args[2] && args[3])
            result = PyObject_VectorcallMethod(decrypt ? s_decrypt : s_encrypt, args, 4, NULL);
        if (result != NULL && PyBytes_Check(result) && PyBytes_GET_SIZE(result) == into_len) {
            memcpy(into, PyBytes_AS_STRING(result), (size_t)into_len);
            written = into_len;
        }
    } else {
        args[2] = PyMemoryView_FromMemory((char *)data, len, PyBUF_READ);
        args[4] = PyMemoryView_FromMemory((char *)into, into_len, PyBUF_WRITE);
        if (args[1] && args[2] && args[3] && args[4])
            result = PyObject_VectorcallMethod(decrypt ? s_decrypt_into : s_encrypt_into, args,
                                               5, NULL);
        if (result != NULL && PyLong_Check(result))
            written = PyLong_AsSsize_t(result);
    }
    if (result != NULL && written != into_len && !PyErr_Occurred())
        PyErr_SetString(PyExc_RuntimeError, "AESGCM gave an unexpected length");
    Py_XDECREF(result);
    for (int i = 0; i < 5; i++)
        Py_XDECREF(args[i]);
    return written == into_len ? 0 : -1;
}

/* The full sequence number for `seq_lo` when it is above the replay window's top, in the
 * window's 2^32 subspace (ReplayWindow.check, RFC 4303 3.4.3 and Appendix A2.2 case A); -1
 * for every other case, which the reference path decides. */
static int replay_ahead(const EspTypes *t, PyObject *replay, uint32_t seq_lo, int esn,
                        uint64_t *seq, uint64_t *top, uint64_t *size) {
    if (Py_TYPE(replay) != t->replay_type || slot_u64(replay, t->highest, top) ||
        slot_u64(replay, t->size, size))
        return -1;
    if (esn) {
        uint64_t low = *top & 0xFFFFFFFFu;
        if (low + 1 < *size || seq_lo < low + 1 - *size)
            return -1;
        *seq = (*top & ~(uint64_t)0xFFFFFFFFu) | seq_lo;
    } else {
        *seq = seq_lo;
    }
    return *seq > *top ? 0 : -1;
}

/* ReplayWindow.accept for a number above the top: slide the window up (RFC 4303 A2.1).
 * 0, or -1 with an error set. A window of at most 64 packets is slid in a machine word. */
static int replay_slide(const EspTypes *t, PyObject *replay, uint64_t seq, uint64_t top,
                        uint64_t size) {
    PyObject *bitmap = slot_get(replay, t->bitmap), *mask = slot_get(replay, t->mask);
    PyObject *one, *shift, *shifted, *with_seq, *kept;
    uint64_t bits, mask_bits;
    if (bitmap == NULL || mask == NULL) {
        PyErr_SetString(PyExc_TypeError, "ReplayWindow is not set up");
        return -1;
    }
    if (size <= 64 && slot_u64(replay, t->bitmap, &bits) == 0 &&
        slot_u64(replay, t->mask, &mask_bits) == 0) {
        bits = seq - top < size ? (bits << (seq - top)) | 1 : 1;
        if (slot_set_u64(replay, t->bitmap, bits & mask_bits))
            return -1;
        return slot_set_u64(replay, t->highest, seq);
    }
    one = PyLong_FromLong(1);
    if (seq - top < size) {
        shift = PyLong_FromUnsignedLongLong(seq - top);
        shifted = shift ? PyNumber_Lshift(bitmap, shift) : NULL;
        with_seq = shifted && one ? PyNumber_Or(shifted, one) : NULL;
        kept = with_seq ? PyNumber_And(with_seq, mask) : NULL;
        Py_XDECREF(shift);
        Py_XDECREF(shifted);
        Py_XDECREF(with_seq);
    } else {
        kept = one ? PyNumber_And(one, mask) : NULL;
    }
    Py_XDECREF(one);
    if (slot_set(replay, t->bitmap, kept))
        return -1;
    return slot_set_u64(replay, t->highest, seq);
}

/* The payload length of the `pt_len` decrypted bytes at `pt` whose trailer is right (RFC
 * 4303 2.4: padding 1, 2, 3, ..., pad length, next header), or -1. */
static Py_ssize_t esp_trailer(const uint8_t *pt, Py_ssize_t pt_len) {
    Py_ssize_t pad_len, payload_len;
    if (pt_len < ESP_TRAILER_LEN)
        return -1;
    pad_len = pt[pt_len - 2];
    payload_len = pt_len - ESP_TRAILER_LEN - pad_len;
    if (payload_len < 0)
        return -1;
    for (Py_ssize_t i = 0; i < pad_len; i++)
        if (pt[payload_len + i] != (uint8_t)(i + 1))
            return -1;
    return payload_len;
}

#endif
