/* The frames of a UDP burst in C: `build_udp_frames` of `frames.py`.
 *
 * Theory of operation: the host stack's burst send resolves policy, state and neighbour once
 * per burst; what is left per datagram is bytes, L2 | IP | [ESP | IV] | UDP | payload, with
 * the IPv4 header checksum and the UDP checksum over its pseudo-header. Everything that is the
 * same for the whole burst is prepared once: the headers as a template (addresses, ports,
 * protocol, TTL, SPI) and the ones' complement sum of the pseudo-header's addresses and
 * protocol. Each frame is then one bytes object allocated at its final size and filled in
 * order: the L2 header and the template copied, the lengths, IPv4 identification, ESP sequence
 * number and IV written, the payload copied once, and the UDP checksum summed over header and
 * payload in the frame itself (checksum.h), where the copy left them in the cache.
 *
 * The arguments are checked as the reference (frames.py) checks them, in the same order, and a
 * wrong one raises the same UsageError with the same message (the tests hold both to it): the
 * burst's arguments once, each payload's type and size as its frame is built. On an error the
 * frames built so far are freed and nothing is returned.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "wire/byteorder.h"
#include "wire/checksum.h"

#define ETH_HEADER_LEN 14
#define MAX_VLANS 2
#define VLAN_TAG_LEN 4
#define IPV4_HEADER_LEN 20
#define IPV6_HEADER_LEN 40
#define ESP_LEN 16 /* the ESP header (SPI, low 32 bits of the sequence number) and the IV */
#define UDP_HEADER_LEN 8
#define ETH_IPV4 0x0800u
#define ETH_IPV6 0x86DDu
#define PROTO_UDP 17u
#define PROTO_ESP 50u
#define IP_TTL 64u
#define IPV4_DF 0x4000u
#define IP_PACKET_MAX 0xFFFF
#define MAX_HEADERS (IPV6_HEADER_LEN + ESP_LEN + UDP_HEADER_LEN)

/* ipsec_offload.errors.UsageError, looked up when the module loads. */
static PyObject *usage_error;

/* `value` as an integer of `bits` bits (an int, bool or IntEnum in 0..2**bits-1) in *out;
 * 0, or -1 with the reference's UsageError set. */
static int unsigned_field(PyObject *value, const char *name, int bits, uint64_t *out) {
    uint64_t max = bits == 64 ? UINT64_MAX : ((uint64_t)1 << bits) - 1;
    if (PyLong_Check(value)) {
        unsigned long long v = PyLong_AsUnsignedLongLong(value);
        if (!(v == (unsigned long long)-1 && PyErr_Occurred()) && v <= max) {
            *out = v;
            return 0;
        }
        PyErr_Clear(); /* negative, or above 64 bits */
    }
    PyErr_Format(usage_error, "%s %R does not fit %d bits; use 0..%llu", name, value, bits,
                 (unsigned long long)max);
    return -1;
}

/* The reference's UsageError for an argument of the wrong type: "`what` is a <its type's
 * name>; `fix`". Always -1. */
static int wrong_type(const char *what, PyObject *value, const char *fix) {
    PyObject *type = PyType_GetName(Py_TYPE(value));
    if (type != NULL) {
        PyErr_Format(usage_error, "%s is a %U; %s", what, type, fix);
        Py_DECREF(type);
    }
    return -1;
}

/* What holds for the whole burst, from the arguments. */
typedef struct {
    const uint8_t *l2, *src, *dst;
    Py_ssize_t l2_len, addr_len;
    Py_ssize_t room; /* the largest payload */
    int v4, esp;
    uint64_t ip_id, src_port, dst_port, spi, first_seq;
} Burst;

/* Check the arguments that hold for the whole burst as frames._check_burst does (same order,
 * same messages) and fill *b. 0, or -1 with UsageError set. */
static int check_burst(PyObject *const *args, Burst *b) {
    static const char *const names[3] = {"l2", "src", "dst"};
    for (int i = 0; i < 3; i++)
        if (!PyBytes_Check(args[i]))
            return wrong_type(names[i], args[i], "give bytes");
    b->l2 = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    b->src = (const uint8_t *)PyBytes_AS_STRING(args[1]);
    b->dst = (const uint8_t *)PyBytes_AS_STRING(args[2]);
    b->l2_len = PyBytes_GET_SIZE(args[0]);
    b->addr_len = PyBytes_GET_SIZE(args[1]);
    if ((b->addr_len != 4 && b->addr_len != 16) || PyBytes_GET_SIZE(args[2]) != b->addr_len) {
        PyErr_Format(usage_error,
                     "addresses of %zd and %zd bytes; give two IPv4 (4) or two IPv6 (16)",
                     b->addr_len, PyBytes_GET_SIZE(args[2]));
        return -1;
    }
    b->v4 = b->addr_len == 4;
    if (b->l2_len < ETH_HEADER_LEN || b->l2_len > ETH_HEADER_LEN + MAX_VLANS * VLAN_TAG_LEN ||
        (b->l2_len - ETH_HEADER_LEN) % VLAN_TAG_LEN) {
        PyErr_Format(usage_error,
                     "l2 of %zd bytes; give an Ethernet header: 14 bytes, 18 or 22 with VLAN tags",
                     b->l2_len);
        return -1;
    }
    unsigned ethertype = rd16(b->l2 + b->l2_len - 2);
    if (ethertype != (b->v4 ? ETH_IPV4 : ETH_IPV6)) {
        char found[8]; /* PyErr_Format has no %04x */
        snprintf(found, sizeof found, "%04x", ethertype);
        PyErr_Format(usage_error,
                     "l2 ends in EtherType 0x%s but the addresses are %s; give a header ending "
                     "in 0x%s",
                     found, b->v4 ? "IPv4" : "IPv6", b->v4 ? "0800" : "86dd");
        return -1;
    }
    if (unsigned_field(args[3], "IPv4 identification", 16, &b->ip_id) < 0 ||
        unsigned_field(args[5], "UDP source port", 16, &b->src_port) < 0 ||
        unsigned_field(args[6], "UDP destination port", 16, &b->dst_port) < 0)
        return -1;
    PyObject *esp = args[4], *payloads = args[7];
    if (!PyList_Check(payloads) && !PyTuple_Check(payloads))
        return wrong_type("payloads", payloads, "give a list (or tuple) of payloads");
    b->room = IP_PACKET_MAX - UDP_HEADER_LEN - (b->v4 ? IPV4_HEADER_LEN : 0);
    b->esp = esp != Py_None;
    b->spi = b->first_seq = 0;
    if (!b->esp)
        return 0;
    if (!PyTuple_Check(esp) || PyTuple_GET_SIZE(esp) != 2) {
        PyErr_Format(usage_error, "esp %R; give None or (SPI, first sequence number)", esp);
        return -1;
    }
    PyObject *first = PyTuple_GET_ITEM(esp, 1);
    if (unsigned_field(PyTuple_GET_ITEM(esp, 0), "ESP SPI", 32, &b->spi) < 0 ||
        unsigned_field(first, "ESP sequence number", 64, &b->first_seq) < 0)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(payloads);
    if (n > 1 && (uint64_t)(n - 1) > UINT64_MAX - b->first_seq) {
        /* the last number is past 64 bits: a Python int says it */
        PyObject *more = PyLong_FromSsize_t(n - 1), *last = NULL;
        if (more != NULL)
            last = PyNumber_Add(first, more);
        if (last != NULL)
            PyErr_Format(usage_error,
                         "ESP sequence numbers %S..%S do not fit 64 bits; send at most %llu "
                         "datagrams from %S",
                         first, last, (unsigned long long)(UINT64_MAX - b->first_seq + 1), first);
        Py_XDECREF(more);
        Py_XDECREF(last);
        return -1;
    }
    b->room -= ESP_LEN;
    return 0;
}

/* The payload's bytes: a bytes object as it is, a bytearray or a C-contiguous memoryview
 * through the buffer protocol (view->obj NULL when no buffer was taken). 0, or -1 with the
 * reference's UsageError set. */
static int payload_view(PyObject *item, Py_ssize_t index, Py_buffer *view) {
    if (PyBytes_Check(item)) {
        view->obj = NULL;
        view->buf = PyBytes_AS_STRING(item);
        view->len = PyBytes_GET_SIZE(item);
        return 0;
    }
    if (PyByteArray_Check(item) || PyMemoryView_Check(item)) {
        if (PyObject_GetBuffer(item, view, PyBUF_C_CONTIGUOUS) == 0)
            return 0;
        PyErr_Clear();
    }
    char what[40];
    snprintf(what, sizeof what, "payload %zd", index);
    return wrong_type(what, item, "give bytes, bytearray or a contiguous memoryview");
}

/* The headers after L2 with what every frame of the burst shares; lengths, identification,
 * checksums and sequence numbers are left zero. Returns their length. */
static Py_ssize_t header_template(const Burst *b, uint8_t *t) {
    Py_ssize_t ip_len = b->v4 ? IPV4_HEADER_LEN : IPV6_HEADER_LEN;
    Py_ssize_t udp_at = ip_len + (b->esp ? ESP_LEN : 0);
    uint8_t protocol = b->esp ? PROTO_ESP : PROTO_UDP;
    memset(t, 0, MAX_HEADERS);
    if (b->v4) { /* RFC 791: version 4, IHL 5, DF, TTL 64 */
        t[0] = 0x45;
        wr16(t + 6, IPV4_DF);
        t[8] = IP_TTL;
        t[9] = protocol;
        memcpy(t + 12, b->src, 4);
        memcpy(t + 16, b->dst, 4);
    } else { /* RFC 8200: version 6, traffic class and flow label 0, hop limit 64 */
        t[0] = 0x60;
        t[6] = protocol;
        t[7] = IP_TTL;
        memcpy(t + 8, b->src, 16);
        memcpy(t + 24, b->dst, 16);
    }
    if (b->esp)
        wr32(t + ip_len, (uint32_t)b->spi);
    wr16(t + udp_at, (unsigned)b->src_port);
    wr16(t + udp_at + 2, (unsigned)b->dst_port);
    return udp_at + UDP_HEADER_LEN;
}

/* build_udp_frames(l2, src, dst, ip_id, esp, src_port, dst_port, payloads) -> list[bytes] */
static PyObject *build_udp_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "build_udp_frames takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    Burst b;
    if (check_burst(args, &b) < 0)
        return NULL;
    PyObject *payloads = args[7];
    Py_ssize_t n = PySequence_Fast_GET_SIZE(payloads);
    PyObject *frames = PyList_New(n);
    if (frames == NULL)
        return NULL;
    uint8_t tmpl[MAX_HEADERS];
    Py_ssize_t headers = header_template(&b, tmpl);
    Py_ssize_t ip_len = b.v4 ? IPV4_HEADER_LEN : IPV6_HEADER_LEN;
    Py_ssize_t udp_at = headers - UDP_HEADER_LEN;
    /* RFC 768 / RFC 8200 8.1: the pseudo-header but its length, added per frame (IPv6's
     * 32-bit length and next header sum as the 16-bit values they hold) */
    uint64_t pseudo = csum_add(csum_add(0, b.src, (size_t)b.addr_len), b.dst, (size_t)b.addr_len);
    pseudo = csum_add16(pseudo, PROTO_UDP);

    for (Py_ssize_t i = 0; i < n; i++) {
        /* A finalizer the allocator runs could shrink a list of payloads: look again each
         * time, and hold the payload while it is used. */
        if (i >= PySequence_Fast_GET_SIZE(payloads)) {
            PyErr_SetString(PyExc_RuntimeError, "payloads changed size during the call");
            goto fail;
        }
        PyObject *item = PySequence_Fast_GET_ITEM(payloads, i);
        Py_buffer view;
        Py_INCREF(item);
        if (payload_view(item, i, &view) < 0) {
            Py_DECREF(item);
            goto fail;
        }
        if (view.len > b.room) {
            PyErr_Format(usage_error, "payload %zd has %zd bytes; at most %zd fit one %s packet%s",
                         i, view.len, b.room, b.v4 ? "IPv4" : "IPv6", b.esp ? " with ESP" : "");
            PyBuffer_Release(&view); /* nothing for a bytes payload, whose view.obj is NULL */
            Py_DECREF(item);
            goto fail;
        }
        Py_ssize_t udp_len = UDP_HEADER_LEN + view.len;
        PyObject *frame = PyBytes_FromStringAndSize(NULL, b.l2_len + headers + view.len);
        if (frame == NULL) {
            PyBuffer_Release(&view);
            Py_DECREF(item);
            goto fail;
        }
        uint8_t *l2 = (uint8_t *)PyBytes_AS_STRING(frame);
        uint8_t *ip = l2 + b.l2_len, *udp = ip + udp_at;
        memcpy(l2, b.l2, (size_t)b.l2_len);
        memcpy(ip, tmpl, (size_t)headers);
        if (b.v4) {
            wr16(ip + 2, (unsigned)(udp_at + udp_len));
            wr16(ip + 4, (unsigned)((b.ip_id + (uint64_t)i) & 0xFFFF));
            wr16(ip + 10, csum_finish(csum_add(0, ip, IPV4_HEADER_LEN)));
        } else {
            wr16(ip + 4, (unsigned)(udp_at - IPV6_HEADER_LEN + udp_len));
        }
        if (b.esp) {
            uint64_t seq = b.first_seq + (uint64_t)i;
            wr32(ip + ip_len + 4, (uint32_t)seq); /* ESN: the header holds the low 32 bits */
            wr64(ip + ip_len + 8, seq);           /* the explicit IV: all 64 */
        }
        wr16(udp + 4, (unsigned)udp_len);
        memcpy(udp + UDP_HEADER_LEN, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
        Py_DECREF(item);
        unsigned checksum =
            csum_finish(csum_add(csum_add16(pseudo, (unsigned)udp_len), udp, (size_t)udp_len));
        wr16(udp + 6, checksum ? checksum : 0xFFFF); /* RFC 768: a computed 0 is sent as 0xffff */
        PyList_SET_ITEM(frames, i, frame);
    }
    return frames;

fail:
    Py_DECREF(frames); /* the frames built so far; the list's empty slots are NULL */
    return NULL;
}

static PyMethodDef frames_methods[] = {
    {"build_udp_frames", (PyCFunction)(void (*)(void))build_udp_frames, METH_FASTCALL,
     "build_udp_frames($module, l2, src, dst, ip_id, esp, src_port, dst_port, payloads, /)\n--\n\n"
     "The frames of a UDP burst, a list of bytes; see frames.reference_build_udp_frames."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef frames_module = {
    PyModuleDef_HEAD_INIT, .m_name = "ipsec_offload.wire._frames",
    .m_doc = "The frames of a UDP burst in C (see frames.py).", .m_size = -1,
    .m_methods = frames_methods,
};

PyMODINIT_FUNC PyInit__frames(void) {
    PyObject *errors = PyImport_ImportModule("ipsec_offload.errors");
    if (errors == NULL)
        return NULL;
    usage_error = PyObject_GetAttrString(errors, "UsageError");
    Py_DECREF(errors);
    if (usage_error == NULL)
        return NULL;
    return PyModule_Create(&frames_module);
}
