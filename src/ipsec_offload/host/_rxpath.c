/* The host stack's compiled receive path (see host/stack.py, host/esp_input.py and
 * docs/performance.md).
 *
 * Theory of operation: a software ESP peer spends its receive time in per-packet Python
 * (parsing, the replay window, the AEAD call, the checksum, building the event objects). This
 * module does that work for the common case and leaves every other case to the Python
 * reference path, as the agent's fast path (agent/_datapath.c) does for the agent.
 * `RxPath.burst` is HostStack.poll for a PacketReceived whose frame is untagged or VLAN (at
 * most two tags) IPv4 (options allowed, checksum right, not a fragment) or IPv6 (ESP the first
 * next header) ESP to one of the host's addresses, that the agent did not decrypt (no Rx
 * metadata, or metadata without IPsec or with a status other than OK, such as NO_SA), whose
 * SPI and destination name an inbound transport-mode state with its cipher context made (the
 * reference path makes it on the state's first packet), whose sequence number is above the
 * replay window (the in-order case; with ESN, a window within one 2^32 subspace), whose ICV
 * verifies and padding is right, and whose payload is a UDP datagram with a right length and
 * checksum that the inbound policies admit through that state. It appends the Delivered event
 * and updates the state (replay window, packets, bytes) and the counters (rx_esp_software,
 * rx_delivered) as the reference path does. No lifetime is checked: the reference path checks
 * none on receive either. (The MAC filter of a PlainDriver's received frames, before the
 * stack, is the NIC's: nic/_nicpath.c.)
 *
 * At the first event that is anything else a call returns its position, and the Python path
 * takes that one event. An event is only committed (state, counters, output) once this module
 * is sure to finish it, so one handed back is as if this module had never seen it. The state
 * stays in the Python objects (XfrmState, ReplayWindow, EspAead, StackCounters), read and
 * written through their slots; the events are the same frozen dataclasses, allocated and
 * filled here. The policy check is the stack's own (`admits`), asked once per (state, source,
 * destination) within a call and remembered only for that call, so a policy change between
 * two calls is always seen. Frame parsing, the replay window, the AEAD call and the trailer
 * check are shared with the agent (agent/esp_open.h); the slots are read and written with
 * pyslots.h, and the checksum is wire/checksum.h's.
 */
#include "agent/esp_open.h"
#include "pyslots.h"
#include "wire/checksum.h"

#define PROTO_UDP 17u
#define UDP_HEADER_LEN 8
#define MEMO_SIZE 4

/* The slots this module reads and writes, by object. */
enum { PACKET_FRAME, PACKET_RX, PACKET_FIELDS };
static const char *const packet_names[PACKET_FIELDS] = {"frame", "rx"};
enum {
    STATE_SPI, STATE_MODE, STATE_ESN, STATE_REPLAY, STATE_AEAD, STATE_PACKETS, STATE_BYTES,
    STATE_HANDLE, STATE_FIELDS
};
static const char *const state_names[STATE_FIELDS] = {
    "spi", "mode", "esn", "replay", "_aead", "packets", "bytes", "handle",
};
enum { RX_IPSEC, RX_STATUS, RX_FIELDS };
static const char *const rx_names[RX_FIELDS] = {"ipsec", "status"};
enum { COUNT_ESP, COUNT_DELIVERED, COUNT_FIELDS };
static const char *const count_names[COUNT_FIELDS] = {"rx_esp_software", "rx_delivered"};
/* Delivered's fields, in the order of its definition. */
enum {
    D_TIME, D_PROTOCOL, D_SRC, D_DST, D_SRC_PORT, D_DST_PORT, D_PAYLOAD, D_STATE, D_OFFLOADED,
    D_TCP_SEQ, D_TCP_FLAGS, D_FIELDS
};
static const char *const delivered_names[D_FIELDS] = {
    "time", "protocol", "src", "dst", "src_port", "dst_port", "payload", "state", "offloaded",
    "tcp_seq", "tcp_flags",
};

/* -- HostStack.poll ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *inbound;   /* Sad.inbound: (SPI, dst) -> XfrmState */
    PyObject *addresses; /* HostStack.addresses (IpLayer.addresses) */
    PyObject *counters;  /* HostStack.counters (StackCounters) */
    PyObject *admits;    /* Spd.admits(src, dst, protocol, state) -> bool */
    PyObject *transport; /* Mode.TRANSPORT */
    PyObject *rx_ok;     /* RxStatus.OK */
    PyObject *invalid_tag;
    PyObject *udp;       /* the protocol number 17 */
    PyTypeObject *packet_type, *rx_type, *state_type, *delivered_type;
    EspTypes esp;
    Py_ssize_t packet[PACKET_FIELDS], rx[RX_FIELDS], state[STATE_FIELDS], count[COUNT_FIELDS],
        delivered[D_FIELDS];
    uint8_t *scratch; /* where a packet is decrypted */
    Py_ssize_t scratch_len;
} RxPath;

/* What one call has looked up so far. Nothing the call runs (the AEAD, the policy check)
 * changes the stack's states or policies, so within a call an answer stays right; it is
 * asked again in the next call. The memo holds a reference to each state it names, so that
 * a state taken out of the table by Python code the call runs all the same (the policy check
 * is a Python method) is never read after it is freed; `memo_clear` drops them. */
typedef struct {
    PyObject *state; /* strong reference, or NULL */
    Py_ssize_t addr_len;
    uint8_t src[16], dst[16];
    int admitted;
} Verdict; /* Spd.admits for a state and addresses */

typedef struct {
    Verdict v[MEMO_SIZE];
    int used, next;
    PyObject *state; /* the last state found (strong reference), NULL before the first */
    uint32_t spi;    /* and its key */
    Py_ssize_t addr_len;
    uint8_t dst[16];
} Memo;

/* The inbound state the frame's SPI and destination (`dst`) name, from the memo or the
 * stack's table: a borrowed reference, or NULL (with an error set when there was one). */
static PyObject *inbound_state(RxPath *self, Memo *memo, const Frame *f, uint32_t spi,
                               PyObject *dst) {
    PyObject *key, *state;
    if (memo->state != NULL && memo->spi == spi && memo->addr_len == f->addr_len &&
        memcmp(memo->dst, f->p + f->dst_off, (size_t)f->addr_len) == 0)
        return memo->state;
    key = Py_BuildValue("(kO)", (unsigned long)spi, dst);
    if (key == NULL)
        return NULL;
    state = PyDict_GetItemWithError(self->inbound, key);
    Py_DECREF(key);
    if (state != NULL) {
        Py_INCREF(state);
        Py_XSETREF(memo->state, state);
        memo->spi = spi;
        memo->addr_len = f->addr_len;
        memcpy(memo->dst, f->p + f->dst_off, (size_t)f->addr_len);
    }
    return state;
}

/* Spd.admits for a UDP packet from `src` to `dst` through `state`, from the memo or
 * asked once: 1 admitted, 0 not, -1 error. */
static int admitted(RxPath *self, Memo *memo, PyObject *state, const Frame *f, PyObject *src,
                    PyObject *dst) {
    const uint8_t *s = f->p + f->src_off, *d = f->p + f->dst_off;
    PyObject *result;
    Verdict *v;
    int ok;
    for (int i = 0; i < memo->used; i++) {
        v = &memo->v[i];
        if (v->state == state && v->addr_len == f->addr_len &&
            memcmp(v->src, s, (size_t)f->addr_len) == 0 &&
            memcmp(v->dst, d, (size_t)f->addr_len) == 0)
            return v->admitted;
    }
    result = PyObject_CallFunctionObjArgs(self->admits, src, dst, self->udp, state, NULL);
    if (result == NULL)
        return -1;
    ok = PyObject_IsTrue(result);
    Py_DECREF(result);
    if (ok < 0)
        return -1;
    v = &memo->v[memo->next];
    memo->next = (memo->next + 1) % MEMO_SIZE;
    memo->used += memo->used < MEMO_SIZE;
    Py_INCREF(state);
    Py_XSETREF(v->state, state);
    v->addr_len = f->addr_len;
    memcpy(v->src, s, (size_t)f->addr_len);
    memcpy(v->dst, d, (size_t)f->addr_len);
    v->admitted = ok;
    return ok;
}

/* Drop the references a call's memo holds. */
static void memo_clear(Memo *memo) {
    for (int i = 0; i < MEMO_SIZE; i++)
        Py_CLEAR(memo->v[i].state);
    Py_CLEAR(memo->state);
}

/* Whether the frame's destination is one of the host's addresses (IpLayer.packet). */
static int for_us(const RxPath *self, const Frame *f) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(self->addresses, &pos, &key, &value))
        if (PyBytes_CheckExact(value) && PyBytes_GET_SIZE(value) == f->addr_len &&
            memcmp(PyBytes_AS_STRING(value), f->p + f->dst_off, (size_t)f->addr_len) == 0)
            return 1;
    return 0;
}

/* Add `n` to each counter of the stack a delivered packet counts in. 0, or -1 with an error
 * set. */
static int count(RxPath *self, Py_ssize_t n) {
    uint64_t value;
    for (int i = 0; i < COUNT_FIELDS && n; i++) {
        if (slot_u64(self->counters, self->count[i], &value)) {
            PyErr_SetString(PyExc_TypeError, "StackCounters holds a counter that is not an int");
            return -1;
        }
        if (slot_set_u64(self->counters, self->count[i], value + (uint64_t)n))
            return -1;
    }
    return 0;
}

/* What this module needs of the inbound state the frame names. */
typedef struct {
    PyObject *replay, *aead, *handle; /* borrowed from the state */
    uint64_t spi, packets, bytes;
    int esn;
} StateView;

/* The state's fields when it is the common case: 0, or -1 (not handled). */
static int state_view(const RxPath *self, PyObject *state, StateView *sv) {
    const Py_ssize_t *o = self->state;
    PyObject *esn;
    if (Py_TYPE(state) != self->state_type || slot_get(state, o[STATE_MODE]) != self->transport)
        return -1;
    esn = slot_get(state, o[STATE_ESN]);
    sv->replay = slot_get(state, o[STATE_REPLAY]);
    sv->aead = slot_get(state, o[STATE_AEAD]);
    sv->handle = slot_get(state, o[STATE_HANDLE]);
    if ((esn != Py_True && esn != Py_False) || sv->replay == NULL || sv->aead == NULL ||
        Py_TYPE(sv->aead) != self->esp.aead_type || sv->handle == NULL ||
        slot_u64(state, o[STATE_SPI], &sv->spi) || sv->spi > 0xFFFFFFFFu ||
        slot_u64(state, o[STATE_PACKETS], &sv->packets) ||
        slot_u64(state, o[STATE_BYTES], &sv->bytes))
        return -1;
    sv->esn = esn == Py_True;
    return 0;
}

/* The frame of a PacketReceived that is the common case as far as the event and its headers
 * tell (HostStack.poll and _input, IpLayer.receive): 0 with `f` filled, or -1. */
static int rx_headers(const RxPath *self, PyObject *event, Frame *f) {
    PyObject *frame, *rx, *ipsec, *status;
    int maybe_offloaded;
    if (Py_TYPE(event) != self->packet_type)
        return -1;
    frame = slot_get(event, self->packet[PACKET_FRAME]);
    rx = slot_get(event, self->packet[PACKET_RX]);
    if (frame == NULL || rx == NULL || !PyBytes_CheckExact(frame))
        return -1;
    /* the agent did not decrypt it (the stack's `offloaded` is false): no metadata, metadata
     * without IPsec, or an RxStatus other than OK */
    if (rx != Py_None) {
        if (Py_TYPE(rx) != self->rx_type)
            return -1;
        ipsec = slot_get(rx, self->rx[RX_IPSEC]);
        status = slot_get(rx, self->rx[RX_STATUS]);
        if (ipsec == Py_True)
            maybe_offloaded = status == NULL || Py_TYPE(status) != Py_TYPE(self->rx_ok) ||
                              status == self->rx_ok; /* an RxStatus member is a singleton */
        else
            maybe_offloaded = ipsec != Py_False;
        if (maybe_offloaded)
            return -1;
    }
    f->p = (const uint8_t *)PyBytes_AS_STRING(frame);
    f->len = PyBytes_GET_SIZE(frame);
    if (f->len < 14 || parse_vlans(f, 12) || locate_esp(f, -1) || !for_us(self, f))
        return -1;
    return 0;
}

/* Decrypt and deliver the packet of one event (EspInput.input, Transport.deliver).
 * A new reference to its Delivered event; Py_None (new reference) when the event is not the
 * common case; NULL on error. */
static PyObject *rx_event(RxPath *self, PyObject *event, PyObject *now, Memo *memo) {
    Frame f;
    StateView sv;
    uint32_t spi, seq_lo;
    uint64_t seq, top, size, sum;
    Py_ssize_t ct_start, pt_len, payload_len, udp_len;
    PyObject *src = NULL, *dst = NULL, *state = NULL, *values[D_FIELDS], *delivered;
    uint8_t *pt;
    int ok;

    if (rx_headers(self, event, &f))
        Py_RETURN_NONE;
    spi = rd32(f.p + f.esp_start);
    seq_lo = rd32(f.p + f.esp_start + 4);
    ct_start = f.esp_start + ESP_HEADER_LEN + ESP_IV_LEN;
    pt_len = f.ip_end - ct_start - ICV_LEN;
    if (pt_len < ESP_TRAILER_LEN) /* the reference path counts (or raises) it */
        Py_RETURN_NONE;
    src = PyBytes_FromStringAndSize((const char *)f.p + f.src_off, f.addr_len);
    dst = PyBytes_FromStringAndSize((const char *)f.p + f.dst_off, f.addr_len);
    if (src == NULL || dst == NULL)
        goto error;
    state = inbound_state(self, memo, &f, spi, dst);
    if (state == NULL) {
        if (PyErr_Occurred())
            goto error;
        goto slow;
    }
    Py_INCREF(state);
    if (state_view(self, state, &sv) ||
        replay_ahead(&self->esp, sv.replay, seq_lo, sv.esn, &seq, &top, &size))
        goto slow;
    if (self->scratch_len < pt_len) {
        uint8_t *grown = PyMem_Realloc(self->scratch, (size_t)pt_len);
        if (grown == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        self->scratch = grown;
        self->scratch_len = pt_len;
    }
    pt = self->scratch;
    if (aead_call(&self->esp, sv.aead, 1, f.p + ct_start - ESP_IV_LEN, (uint32_t)sv.spi, seq,
                  sv.esn, f.p + ct_start, f.ip_end - ct_start, pt, pt_len)) {
        if (!PyErr_ExceptionMatches(self->invalid_tag))
            goto error;
        PyErr_Clear(); /* in_auth_failed: the reference path counts it */
        goto slow;
    }
    payload_len = esp_trailer(pt, pt_len);
    if (payload_len < UDP_HEADER_LEN || pt[pt_len - 1] != PROTO_UDP)
        goto slow;
    udp_len = (Py_ssize_t)rd16(pt + 4);
    if (udp_len < UDP_HEADER_LEN || udp_len > payload_len)
        goto slow;
    /* transport_checksum: the pseudo-header's sum is that of the addresses, the protocol and
     * the length, for IPv4 and IPv6 alike (a datagram here is shorter than 2^16 bytes) */
    sum = csum_add(0, f.p + f.src_off, (size_t)f.addr_len);
    sum = csum_add(sum, f.p + f.dst_off, (size_t)f.addr_len);
    sum = csum_add16(csum_add16(sum, PROTO_UDP), (unsigned)payload_len);
    if (csum_finish(csum_add(sum, pt, (size_t)payload_len)) != 0)
        goto slow;
    ok = admitted(self, memo, state, &f, src, dst);
    if (ok < 0)
        goto error;
    if (!ok)
        goto slow;

    values[D_TIME] = Py_NewRef(now);
    values[D_PROTOCOL] = Py_NewRef(self->udp);
    values[D_SRC] = src;
    values[D_DST] = dst;
    values[D_SRC_PORT] = PyLong_FromLong((long)rd16(pt));
    values[D_DST_PORT] = PyLong_FromLong((long)rd16(pt + 2));
    values[D_PAYLOAD] = PyBytes_FromStringAndSize((const char *)pt + UDP_HEADER_LEN,
                                                  udp_len - UDP_HEADER_LEN);
    values[D_STATE] = Py_NewRef(sv.handle);
    values[D_OFFLOADED] = Py_NewRef(Py_False);
    values[D_TCP_SEQ] = Py_NewRef(Py_None);
    values[D_TCP_FLAGS] = Py_NewRef(Py_None);
    src = dst = NULL; /* the record owns them now */
    delivered = new_record(self->delivered_type, self->delivered, values, D_FIELDS);
    if (delivered == NULL)
        goto error;
    if (replay_slide(&self->esp, sv.replay, seq, top, size) ||
        slot_set_u64(state, self->state[STATE_PACKETS], sv.packets + 1) ||
        slot_set_u64(state, self->state[STATE_BYTES], sv.bytes + (uint64_t)payload_len)) {
        Py_DECREF(delivered);
        goto error;
    }
    Py_DECREF(state);
    return delivered;

slow:
    Py_XDECREF(state);
    Py_XDECREF(src);
    Py_XDECREF(dst);
    Py_RETURN_NONE;
error:
    Py_XDECREF(state);
    Py_XDECREF(src);
    Py_XDECREF(dst);
    return NULL;
}

/* -1 with an error set when __init__ has not run (RxPath.__new__ alone), else 0. */
static int not_initialised(const RxPath *self) {
    if (self->inbound != NULL && self->counters != NULL && self->admits != NULL &&
        self->state_type != NULL && self->delivered_type != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "RxPath is not initialised");
    return -1;
}

/* events[start:] in order while each is the common case, their Delivered events (at `now`)
 * appended to `out`; the position of the first event left to the Python path (len when
 * none). `now` and `out` come first, so that the stack binds them once per poll. The counters
 * are added to once, at the end, for the events handled (also when an error stopped it). The
 * list's length is read again before each event: the policy check is Python code. */
static PyObject *RxPath_burst(RxPath *self, PyObject *args) {
    PyObject *events, *now, *out, *result;
    Py_ssize_t start, i, n;
    Memo memo = {0};
    int appended;
    if (not_initialised(self) ||
        !PyArg_ParseTuple(args, "OO!O!n", &now, &PyList_Type, &out, &PyList_Type, &events,
                          &start))
        return NULL;
    n = PyList_GET_SIZE(events);
    if (start < 0 || start > n) {
        PyErr_SetString(PyExc_IndexError, "start must be 0..len(events)");
        return NULL;
    }
    for (i = start; i < PyList_GET_SIZE(events); i++) {
        PyObject *event = PyList_GET_ITEM(events, i);
        Py_INCREF(event);
        result = rx_event(self, event, now, &memo);
        Py_DECREF(event);
        if (result == NULL)
            break;
        if (result == Py_None) {
            Py_DECREF(result);
            break;
        }
        appended = PyList_Append(out, result);
        Py_DECREF(result);
        if (appended < 0) {
            i++; /* committed: it counts */
            break;
        }
    }
    /* the events before an error were handled: count them, then raise the error */
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    memo_clear(&memo);
    if (count(self, i - start) < 0) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        return NULL;
    }
    if (type != NULL) {
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    return PyLong_FromSsize_t(i);
}

static int RxPath_init(RxPath *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"inbound",     "addresses",   "counters",   "admits",
                             "transport",   "rx_ok",       "invalid_tag", "packet_type",
                             "rx_type",     "state_type",  "replay_type", "aead_type",
                             "delivered_type", NULL};
    PyObject *inbound, *addresses, *counters, *admits, *transport, *rx_ok, *invalid_tag, *udp;
    PyTypeObject *packet_type, *rx_type, *state_type, *replay_type, *aead_type, *delivered_type;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "O!O!OOOOOO!O!O!O!O!O!", kwlist, &PyDict_Type, &inbound, &PyDict_Type,
            &addresses, &counters, &admits, &transport, &rx_ok, &invalid_tag, &PyType_Type,
            &packet_type,
            &PyType_Type, &rx_type, &PyType_Type, &state_type, &PyType_Type, &replay_type,
            &PyType_Type, &aead_type, &PyType_Type, &delivered_type))
        return -1;
    if (slot_offsets(packet_type, packet_names, PACKET_FIELDS, self->packet) ||
        slot_offsets(rx_type, rx_names, RX_FIELDS, self->rx) ||
        slot_offsets(state_type, state_names, STATE_FIELDS, self->state) ||
        slot_offsets(Py_TYPE(counters), count_names, COUNT_FIELDS, self->count) ||
        slot_offsets(delivered_type, delivered_names, D_FIELDS, self->delivered) ||
        esp_types_init(&self->esp, replay_type, aead_type))
        return -1;
    udp = PyLong_FromLong(PROTO_UDP);
    if (udp == NULL)
        return -1;
    Py_XSETREF(self->udp, udp);
#define KEEP(field)              \
    Py_INCREF(field);            \
    Py_XSETREF(self->field, field);
    KEEP(inbound)
    KEEP(addresses)
    KEEP(counters)
    KEEP(admits)
    KEEP(transport)
    KEEP(rx_ok)
    KEEP(invalid_tag)
    KEEP(packet_type)
    KEEP(rx_type)
    KEEP(state_type)
    KEEP(delivered_type)
#undef KEEP
    return 0;
}

static int RxPath_traverse(RxPath *self, visitproc visit, void *arg) {
    Py_VISIT(self->inbound);
    Py_VISIT(self->addresses);
    Py_VISIT(self->counters);
    Py_VISIT(self->admits);
    Py_VISIT(self->transport);
    Py_VISIT(self->rx_ok);
    Py_VISIT(self->invalid_tag);
    Py_VISIT(self->udp);
    Py_VISIT(self->packet_type);
    Py_VISIT(self->rx_type);
    Py_VISIT(self->state_type);
    Py_VISIT(self->delivered_type);
    return esp_types_traverse(&self->esp, visit, arg);
}

static int RxPath_clear(RxPath *self) {
    Py_CLEAR(self->inbound);
    Py_CLEAR(self->addresses);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->admits);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->rx_ok);
    Py_CLEAR(self->invalid_tag);
    Py_CLEAR(self->udp);
    Py_CLEAR(self->packet_type);
    Py_CLEAR(self->rx_type);
    Py_CLEAR(self->state_type);
    Py_CLEAR(self->delivered_type);
    esp_types_clear(&self->esp);
    return 0;
}

static void RxPath_dealloc(RxPath *self) {
    PyObject_GC_UnTrack(self);
    RxPath_clear(self);
    PyMem_Free(self->scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef RxPath_methods[] = {
    {"burst", (PyCFunction)RxPath_burst, METH_VARARGS,
     "burst(now, out, events, start) -> int: deliver the packets of events[start:] onto out\n"
     "while each is the common case; the position of the first event left to the Python path."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RxPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipsec_offload.host._rxpath.RxPath",
    .tp_doc = "The host stack's compiled receive path over the stack's own states and counters.",
    .tp_basicsize = sizeof(RxPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RxPath_init,
    .tp_traverse = (traverseproc)RxPath_traverse,
    .tp_clear = (inquiry)RxPath_clear,
    .tp_dealloc = (destructor)RxPath_dealloc,
    .tp_methods = RxPath_methods,
};

static struct PyModuleDef rxpath_module = {
    PyModuleDef_HEAD_INIT, .m_name = "ipsec_offload.host._rxpath",
    .m_doc = "The host stack's compiled receive path (see host/esp_input.py, docs/performance.md).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__rxpath(void) {
    PyObject *module;
    if (esp_open_ready() < 0 || PyType_Ready(&RxPathType) < 0)
        return NULL;
    module = PyModule_Create(&rxpath_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddType(module, &RxPathType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
