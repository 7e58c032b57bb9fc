/* The NIC's compiled fast paths (see docs/performance.md): the Tx pipeline of the NIC model
 * (`TxPath`) and the receive MAC filter of a plain NIC (`plain_receive`).
 *
 * Theory of operation: the FVL's Tx pipeline handles the common descriptor at line rate; this
 * module is that pipeline for the NIC model (nic.py), built the way the agent's fast path is
 * (agent/_datapath.c). `TxPath.transmit` walks a VSI's burst of Tx descriptors and handles, in
 * order, every descriptor that is the common case:
 *
 *   an exact TxDescriptor without TSO (mss 0) whose frame is a bytes object with an Ethernet
 *   header Nic._transmit_one parses (at most two VLAN tags, none truncated) and carries IPv4
 *   or IPv6 (any other EtherType, which the VSI's Tx EtherType filter may drop, goes to the
 *   reference path), that passes the VSI's anti-spoof check (or the VSI has none), and that
 *   the switch sends toward the agent:
 *   any frame in VEPA mode; in VEB mode a unicast frame whose destination (MAC and VLANs) is
 *   no other VSI's. Its metadata word (the VSI's port tag, or else the descriptor's L2TAG)
 *   must be a 32-bit word or None.
 *
 * For such a descriptor it does what Nic._switch does: the frame goes to the agent with the
 * metadata tag after the MAC addresses (or, without a word, unchanged: the same object), and
 * the VSI's tx_packets, tx_bytes and tx_port_tagged counters are added to once per call. At
 * the first descriptor that is anything else (TSO, broadcast or multicast in VEB mode, a frame
 * switched to another VSI, a malformed or spoofed frame, an odd type or value) the call returns
 * its position and the Python NIC (nic.py, the reference path that handles every descriptor)
 * takes that one descriptor, then calls again for the rest. A descriptor handed back is
 * exactly as if this module had never seen it, so both paths give the same frames, in the
 * same order, and the same counters; the tests run the NIC tests both ways and compare them.
 *
 * `TxPath.descriptors` builds the TxDescriptors of a driver's burst (RingDriver.xmit_burst):
 * the frozen dataclass's slots are written directly (pyslots.h), which is what its __init__
 * does at a fraction of the cost.
 *
 * `plain_receive` is the receive side of a NIC without offload, PlainDriver.receive: the MAC
 * filter a NIC applies in hardware. Each bytes frame for the driver's MAC, broadcast or
 * multicast becomes a PacketReceived(frame, None), the others are dropped; at the first frame
 * that is not a bytes object holding an Ethernet header (a runt, which the driver counts) it
 * returns its position to the Python driver, the reference path, as TxPath.transmit does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "pyslots.h"
#include "wire/byteorder.h"

#define ETH_VLAN 0x8100u
#define ETH_QINQ 0x88A8u
#define ETH_IPV4 0x0800u
#define ETH_IPV6 0x86DDu
#define MAC_LEN 6
#define MAC_END 12 /* where the tags begin: after the destination and source MAC */
#define ETH_MIN_LEN 14
#define META_TAG_LEN 6
#define MAX_VLANS 2

/* The slots of TxDescriptor this module reads and writes. */
enum { DESC_FRAME, DESC_L2TAG, DESC_MSS, DESC_FIELDS };
static const char *const desc_field_names[DESC_FIELDS] = {"frame", "l2tag", "mss"};

/* Attribute names, interned when the module loads. */
static PyObject *s_mac, *s_vlan_key, *s_anti_spoof, *s_port_tag, *s_counters, *s_tx_packets,
    *s_tx_bytes, *s_tx_port_tagged;

/* A VLAN stack as the switch compares it (a VlanKey): (TPID, VID) per tag, outermost first. */
typedef struct {
    int n;
    unsigned tpid[MAX_VLANS], vid[MAX_VLANS];
} Vlans;

static inline int vlans_equal(const Vlans *a, const Vlans *b) {
    if (a->n != b->n)
        return 0;
    for (int i = 0; i < a->n; i++)
        if (a->tpid[i] != b->tpid[i] || a->vid[i] != b->vid[i])
            return 0;
    return 1;
}

/* An exact int in 0 .. `max`: 0 with *out set, or -1 (no error set) when it is not one. */
static int small_uint(PyObject *obj, unsigned long long max, uint32_t *out) {
    int overflow;
    long long v;
    if (!PyLong_CheckExact(obj))
        return -1;
    v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || v < 0 || (unsigned long long)v > max)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* What one call needs of the sending VSI (a nic.Vsi), read once per call. */
typedef struct {
    PyObject *vsi;      /* borrowed */
    PyObject *counters; /* new reference: its VsiCounters */
    int usable;         /* 0: some field is not what this module handles; every descriptor
                           goes to the reference path */
    int anti_spoof;
    uint8_t mac[MAC_LEN];
    Vlans vlans;
    int port_tagged;
    uint32_t port_tag;
} VsiView;

/* A VlanKey into `v`: 0, or -1 (no error set) when it is not one with at most two tags. */
static int parse_vlan_key(PyObject *key, Vlans *v) {
    if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) > MAX_VLANS)
        return -1;
    v->n = (int)PyTuple_GET_SIZE(key);
    for (int i = 0; i < v->n; i++) {
        PyObject *tag = PyTuple_GET_ITEM(key, i);
        uint32_t tpid, vid;
        if (!PyTuple_CheckExact(tag) || PyTuple_GET_SIZE(tag) != 2 ||
            small_uint(PyTuple_GET_ITEM(tag, 0), 0xFFFF, &tpid) ||
            small_uint(PyTuple_GET_ITEM(tag, 1), 0xFFFF, &vid))
            return -1;
        v->tpid[i] = tpid;
        v->vid[i] = vid;
    }
    return 0;
}

/* Fill `view` from the VSI: 0 (view->counters a new reference), or -1 with an error set. A
 * field this module does not handle (a port tag that is not a word, which makes Nic._switch
 * raise; an odd MAC or VLAN key with anti-spoof on) leaves view->usable 0. */
static int vsi_view(PyObject *vsi, VsiView *view) {
    PyObject *mac = NULL, *key = NULL, *port_tag = NULL, *anti_spoof = NULL;
    int rc = -1;
    memset(view, 0, sizeof *view);
    view->vsi = vsi;
    view->counters = PyObject_GetAttr(vsi, s_counters);
    mac = view->counters ? PyObject_GetAttr(vsi, s_mac) : NULL;
    key = mac ? PyObject_GetAttr(vsi, s_vlan_key) : NULL;
    port_tag = key ? PyObject_GetAttr(vsi, s_port_tag) : NULL;
    anti_spoof = port_tag ? PyObject_GetAttr(vsi, s_anti_spoof) : NULL;
    if (anti_spoof == NULL || (view->anti_spoof = PyObject_IsTrue(anti_spoof)) < 0)
        goto done;
    rc = 0;
    view->port_tagged = port_tag != Py_None;
    view->usable =
        !(view->port_tagged && small_uint(port_tag, 0xFFFFFFFFu, &view->port_tag)) &&
        !(view->anti_spoof && (!PyBytes_CheckExact(mac) || PyBytes_GET_SIZE(mac) != MAC_LEN ||
                               parse_vlan_key(key, &view->vlans)));
    if (view->usable && view->anti_spoof)
        memcpy(view->mac, PyBytes_AS_STRING(mac), MAC_LEN);
done:
    Py_XDECREF(mac);
    Py_XDECREF(key);
    Py_XDECREF(port_tag);
    Py_XDECREF(anti_spoof);
    if (rc)
        Py_CLEAR(view->counters);
    return rc;
}

/* counters.<name> += n. 0, or -1 with an error set. */
static int count(PyObject *counters, PyObject *name, long long n) {
    PyObject *old, *add, *sum;
    int rc;
    if (n == 0)
        return 0;
    old = PyObject_GetAttr(counters, name);
    if (old == NULL)
        return -1;
    add = PyLong_FromLongLong(n);
    sum = add ? PyNumber_Add(old, add) : NULL;
    Py_DECREF(old);
    Py_XDECREF(add);
    if (sum == NULL)
        return -1;
    rc = PyObject_SetAttr(counters, name, sum);
    Py_DECREF(sum);
    return rc;
}

typedef struct {
    PyObject_HEAD
    PyTypeObject *desc_type;
    Py_ssize_t offsets[DESC_FIELDS]; /* where each TxDescriptor slot is in the object */
    PyObject *zero;                  /* the int 0, the mss of a burst's descriptors */
} TxPath;

/* -1 with an error set when __init__ has not run (TxPath.__new__ alone), else 0. */
static int not_initialised(const TxPath *self) {
    if (self->desc_type != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "TxPath is not initialised");
    return -1;
}

/* The destination of a frame, as the switch keys VSIs: (dst MAC, VlanKey). New reference. */
static PyObject *switch_key(const uint8_t *dst, const Vlans *v) {
    PyObject *vlans = PyTuple_New(v->n);
    if (vlans == NULL)
        return NULL;
    for (int i = 0; i < v->n; i++) {
        PyObject *tag = Py_BuildValue("(II)", v->tpid[i], v->vid[i]);
        if (tag == NULL) {
            Py_DECREF(vlans);
            return NULL;
        }
        PyTuple_SET_ITEM(vlans, i, tag);
    }
    return Py_BuildValue("(y#N)", (const char *)dst, (Py_ssize_t)MAC_LEN, vlans);
}

/* The last destination a call looked up in the VSI table: a burst mostly has one. Once a
 * call has read the VSI, no Python code runs until it returns (the table's keys are bytes and
 * tuples of ints), so the table cannot change under it. */
typedef struct {
    int valid;
    uint8_t dst[MAC_LEN];
    Vlans vlans;
    int elsewhere; /* it is another VSI's address */
} LastLookup;

/* Whether the unicast destination is another VSI's (the switch would keep the frame inside
 * the NIC): 1 yes, 0 no, -1 error. */
static int to_other_vsi(PyObject *by_addr, PyObject *vsi, const uint8_t *dst, const Vlans *v,
                        LastLookup *last) {
    PyObject *key, *target;
    if (last->valid && memcmp(last->dst, dst, MAC_LEN) == 0 && vlans_equal(&last->vlans, v))
        return last->elsewhere;
    key = switch_key(dst, v);
    if (key == NULL)
        return -1;
    target = PyDict_GetItemWithError(by_addr, key);
    Py_DECREF(key);
    if (target == NULL && PyErr_Occurred())
        return -1;
    last->valid = 1;
    memcpy(last->dst, dst, MAC_LEN);
    last->vlans = *v;
    last->elsewhere = target != NULL && target != vsi;
    return last->elsewhere;
}

/* One descriptor (Nic._transmit_one and _switch for the common case): a new reference to the
 * frame toward the agent, with *frame_len the length the descriptor's frame counts for;
 * Py_None (new reference) when the descriptor is not the common case; NULL on error. */
static PyObject *tx_one(const TxPath *self, PyObject *desc, const VsiView *view,
                        PyObject *by_addr, int veb, unsigned meta, LastLookup *last,
                        Py_ssize_t *frame_len) {
    PyObject *frame, *l2tag, *mss, *out;
    const uint8_t *p;
    uint8_t *o;
    Py_ssize_t len, off = MAC_END;
    uint32_t word = 0, zero;
    int tagged, elsewhere;
    unsigned et;
    Vlans v = {0};

    if (Py_TYPE(desc) != self->desc_type)
        Py_RETURN_NONE;
    frame = slot_get(desc, self->offsets[DESC_FRAME]);
    l2tag = slot_get(desc, self->offsets[DESC_L2TAG]);
    mss = slot_get(desc, self->offsets[DESC_MSS]);
    if (frame == NULL || l2tag == NULL || mss == NULL || !PyBytes_CheckExact(frame) ||
        small_uint(mss, 0, &zero))
        Py_RETURN_NONE;
    if (view->port_tagged) {
        if (l2tag != Py_None) /* an untrusted VSI's own word: the reference path judges it */
            Py_RETURN_NONE;
        tagged = 1;
        word = view->port_tag;
    } else {
        tagged = l2tag != Py_None;
        if (tagged && small_uint(l2tag, 0xFFFFFFFFu, &word))
            Py_RETURN_NONE;
    }
    /* ethernet_fields without a metadata tag: two MACs, an EtherType, at most two VLAN tags */
    p = (const uint8_t *)PyBytes_AS_STRING(frame);
    len = PyBytes_GET_SIZE(frame);
    if (len < ETH_MIN_LEN)
        Py_RETURN_NONE;
    et = rd16(p + off);
    while (et == ETH_VLAN || et == ETH_QINQ) {
        if (v.n == MAX_VLANS || len < off + 6)
            Py_RETURN_NONE;
        v.tpid[v.n] = et;
        v.vid[v.n] = rd16(p + off + 2) & 0x0FFF;
        v.n++;
        et = rd16(p + off + 4);
        off += 4;
    }
    if (et != ETH_IPV4 && et != ETH_IPV6)
        Py_RETURN_NONE; /* not IP data: the VSI's Tx EtherType filter is the reference path's */
    if (view->anti_spoof &&
        (memcmp(p + MAC_LEN, view->mac, MAC_LEN) != 0 || !vlans_equal(&v, &view->vlans)))
        Py_RETURN_NONE;
    if (veb) {
        if (p[0] & 1)
            Py_RETURN_NONE; /* flooded */
        elsewhere = to_other_vsi(by_addr, view->vsi, p, &v, last);
        if (elsewhere < 0)
            return NULL;
        if (elsewhere)
            Py_RETURN_NONE; /* switched inside the NIC */
    }
    *frame_len = len;
    if (!tagged)
        return Py_NewRef(frame);
    out = PyBytes_FromStringAndSize(NULL, len + META_TAG_LEN);
    if (out == NULL)
        return NULL;
    o = (uint8_t *)PyBytes_AS_STRING(out);
    memcpy(o, p, MAC_END);
    wr16(o + MAC_END, meta);
    wr32(o + MAC_END + 2, word);
    memcpy(o + MAC_END + META_TAG_LEN, p + MAC_END, (size_t)(len - MAC_END));
    return out;
}

/* transmit(descriptors, start, vsi, by_addr, veb, meta_ethertype, to_agent) -> int */
static PyObject *TxPath_transmit(TxPath *self, PyObject *args) {
    PyObject *descs, *vsi, *by_addr, *to_agent, *result = NULL;
    Py_ssize_t start, i, n;
    unsigned meta;
    int veb;
    long long bytes = 0;
    VsiView view;
    LastLookup last = {0};
    if (!PyArg_ParseTuple(args, "O!nOO!pIO!", &PyList_Type, &descs, &start, &vsi, &PyDict_Type,
                          &by_addr, &veb, &meta, &PyList_Type, &to_agent))
        return NULL;
    n = PyList_GET_SIZE(descs);
    if (start < 0 || start > n) {
        PyErr_SetString(PyExc_IndexError, "start must be 0..len(descriptors)");
        return NULL;
    }
    if (meta > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "the metadata EtherType must fit 16 bits");
        return NULL;
    }
    if (not_initialised(self) || vsi_view(vsi, &view))
        return NULL;
    for (i = start; view.usable && i < n; i++) {
        PyObject *desc = PyList_GET_ITEM(descs, i), *frame;
        Py_ssize_t len = 0;
        Py_INCREF(desc);
        frame = tx_one(self, desc, &view, by_addr, veb, meta, &last, &len);
        Py_DECREF(desc);
        if (frame == NULL)
            break;
        if (frame == Py_None || PyList_Append(to_agent, frame) < 0) {
            Py_DECREF(frame);
            break;
        }
        Py_DECREF(frame);
        bytes += len;
    }
    /* the descriptors before an error were handled: count them, then raise the error */
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (count(view.counters, s_tx_packets, i - start) == 0 &&
        count(view.counters, s_tx_bytes, bytes) == 0 &&
        count(view.counters, s_tx_port_tagged, view.port_tagged ? i - start : 0) == 0) {
        if (type == NULL)
            result = PyLong_FromSsize_t(i);
        else
            PyErr_Restore(type, value, traceback);
    } else {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
    }
    Py_DECREF(view.counters);
    return result;
}

/* descriptors(frames, l2tag) -> list: TxDescriptor(frame, l2tag) for each frame. */
static PyObject *TxPath_descriptors(TxPath *self, PyObject *args) {
    PyObject *frames, *l2tag, *seq, *result;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OO", &frames, &l2tag) || not_initialised(self))
        return NULL;
    seq = PySequence_Fast(frames, "descriptors takes a sequence of frames");
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *desc, *values[DESC_FIELDS];
        values[DESC_FRAME] = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
        values[DESC_L2TAG] = Py_NewRef(l2tag);
        values[DESC_MSS] = Py_NewRef(self->zero);
        desc = new_record(self->desc_type, self->offsets, values, DESC_FIELDS);
        if (desc == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, desc);
    }
    Py_DECREF(seq);
    return result;
}

/* A TxPath holds no state but its descriptor type: it pickles as the call that makes it. */
static PyObject *TxPath_reduce(TxPath *self, PyObject *Py_UNUSED(ignored)) {
    if (not_initialised(self))
        return NULL;
    return Py_BuildValue("(O(O))", (PyObject *)Py_TYPE(self), (PyObject *)self->desc_type);
}

static int TxPath_init(TxPath *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"descriptor_type", NULL};
    PyTypeObject *type;
    PyObject *zero;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &PyType_Type, &type))
        return -1;
    /* descriptors() writes the slots itself: the type's __init__ must do no more than that */
    if (PyObject_HasAttrString((PyObject *)type, "__post_init__")) {
        PyErr_Format(PyExc_TypeError, "%s must not have a __post_init__", type->tp_name);
        return -1;
    }
    /* Each field must be an object slot of the type (a `__slots__` entry); one that is not
     * even an attribute of the type (a dataclass field without a default, no `__slots__`) is
     * refused alike, with a TypeError */
    for (int i = 0; i < DESC_FIELDS; i++) {
        if (slot_offset(type, desc_field_names[i], &self->offsets[i]) == 0)
            continue;
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s.%s must be a __slots__ entry", type->tp_name,
                         desc_field_names[i]);
        }
        return -1;
    }
    zero = PyLong_FromLong(0);
    if (zero == NULL)
        return -1;
    Py_XSETREF(self->zero, zero);
    Py_INCREF(type);
    Py_XSETREF(self->desc_type, type);
    return 0;
}

static int TxPath_traverse(TxPath *self, visitproc visit, void *arg) {
    Py_VISIT(self->desc_type);
    return 0;
}

static int TxPath_clear(TxPath *self) {
    Py_CLEAR(self->desc_type);
    Py_CLEAR(self->zero);
    return 0;
}

static void TxPath_dealloc(TxPath *self) {
    PyObject_GC_UnTrack(self);
    TxPath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef TxPath_methods[] = {
    {"transmit", (PyCFunction)TxPath_transmit, METH_VARARGS,
     "transmit(descriptors, start, vsi, by_addr, veb, meta_ethertype, to_agent) -> int: send\n"
     "descriptors[start:] of the VSI toward the agent (onto to_agent) while each is the common\n"
     "case; the position of the first descriptor left to the reference path."},
    {"descriptors", (PyCFunction)TxPath_descriptors, METH_VARARGS,
     "descriptors(frames, l2tag) -> list: TxDescriptor(frame, l2tag) for each frame."},
    {"__reduce__", (PyCFunction)TxPath_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TxPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipsec_offload.nic._nicpath.TxPath",
    .tp_doc = "The NIC's compiled Tx fast path over a descriptor type.",
    .tp_basicsize = sizeof(TxPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TxPath_init,
    .tp_traverse = (traverseproc)TxPath_traverse,
    .tp_clear = (inquiry)TxPath_clear,
    .tp_dealloc = (destructor)TxPath_dealloc,
    .tp_methods = TxPath_methods,
};

/* -- PlainDriver.receive ------------------------------------------------------------------- */

/* The slots of PacketReceived that plain_receive writes. */
enum { PACKET_FRAME, PACKET_RX, PACKET_FIELDS };
static const char *const packet_names[PACKET_FIELDS] = {"frame", "rx"};

/* frames[start:] onto `events` as PlainDriver.receive keeps them, while each is a bytes object
 * of at least an Ethernet header; the position of the first frame left to the Python path. The
 * driver's own arguments come first, so that the driver binds them once per burst. */
static PyObject *plain_receive(PyObject *module, PyObject *args) {
    PyObject *frames, *mac, *events, *event, *values[PACKET_FIELDS];
    PyTypeObject *packet_type;
    Py_ssize_t start, i, offsets[PACKET_FIELDS], mac_len;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!O!O!O!n", &PyBytes_Type, &mac, &PyList_Type, &events,
                          &PyType_Type, &packet_type, &PyList_Type, &frames, &start))
        return NULL;
    if (start < 0 || start > PyList_GET_SIZE(frames)) {
        PyErr_SetString(PyExc_IndexError, "start must be 0..len(frames)");
        return NULL;
    }
    if (slot_offsets(packet_type, packet_names, PACKET_FIELDS, offsets))
        return NULL;
    mac_len = PyBytes_GET_SIZE(mac);
    for (i = start; i < PyList_GET_SIZE(frames); i++) {
        PyObject *frame = PyList_GET_ITEM(frames, i);
        const uint8_t *p;
        Py_ssize_t len;
        int for_mac;
        if (!PyBytes_CheckExact(frame) || PyBytes_GET_SIZE(frame) < ETH_MIN_LEN)
            break; /* a runt (or another type): the Python path counts it */
        p = (const uint8_t *)PyBytes_AS_STRING(frame);
        len = PyBytes_GET_SIZE(frame);
        for_mac = mac_len == MAC_LEN && len >= MAC_LEN && /* frame[:6] == mac */
                  memcmp(p, PyBytes_AS_STRING(mac), MAC_LEN) == 0;
        if (!for_mac && !(p[0] & 1)) /* nor a group address */
            continue;
        values[PACKET_FRAME] = Py_NewRef(frame);
        values[PACKET_RX] = Py_NewRef(Py_None);
        event = new_record(packet_type, offsets, values, PACKET_FIELDS);
        if (event == NULL)
            return NULL;
        if (PyList_Append(events, event) < 0) {
            Py_DECREF(event);
            return NULL;
        }
        Py_DECREF(event);
    }
    return PyLong_FromSsize_t(i);
}

static PyMethodDef nicpath_functions[] = {
    {"plain_receive", plain_receive, METH_VARARGS,
     "plain_receive(mac, events, packet_type, frames, start) -> int: append a\n"
     "packet_type(frame, None) to events for each of frames[start:] for mac, broadcast or\n"
     "multicast, while each is a bytes object of at least an Ethernet header (14 bytes); the\n"
     "position of the first frame left to the Python path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef nicpath_module = {
    PyModuleDef_HEAD_INIT, .m_name = "ipsec_offload.nic._nicpath",
    .m_doc = "The NIC's compiled fast paths (see nic.py, driver/plain.py and "
             "docs/performance.md).",
    .m_size = -1,
    .m_methods = nicpath_functions,
};

PyMODINIT_FUNC PyInit__nicpath(void) {
    PyObject *module;
    static const char *const names[] = {"mac",      "vlan_key",   "anti_spoof", "port_tag",
                                        "counters", "tx_packets", "tx_bytes",
                                        "tx_port_tagged"};
    PyObject **interned[] = {&s_mac,      &s_vlan_key,   &s_anti_spoof, &s_port_tag,
                             &s_counters, &s_tx_packets, &s_tx_bytes,   &s_tx_port_tagged};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        *interned[i] = PyUnicode_InternFromString(names[i]);
        if (*interned[i] == NULL)
            return NULL;
    }
    if (PyType_Ready(&TxPathType) < 0)
        return NULL;
    module = PyModule_Create(&nicpath_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddType(module, &TxPathType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
