/* The agent's compiled fast path (see docs/performance.md).
 *
 * Theory of operation: a real inline engine has a pipeline that handles the common frame at
 * line rate and punts anything unusual to slower logic. This module is that pipeline for the
 * agent model. `Datapath.tx_burst` and `Datapath.rx_burst` walk a burst of frames and handle,
 * in order, every frame that is the common case of its path:
 *
 *   Tx: a tagged OFFLOAD=1 frame (metadata tag outermost, at most two VLAN tags) whose IPv4
 *       header (options allowed) or IPv6 header (no extension headers) holds ESP at the
 *       metadata's offsets, whose outbound SA is found, usable and has carried traffic before,
 *       and that is neither hairpinned nor too large once sealed;
 *   Rx: an untagged-or-VLAN ESP frame of the same shapes whose inbound SA is found and usable,
 *       whose sequence number is above the replay window (the in-order case), whose ICV
 *       verifies and whose padding is right.
 *
 * At the first frame that is anything else the call returns its position, and the Python
 * agent (agent.py, the reference path that handles every frame) takes that one frame. A frame
 * is only committed (SA state, counters, output) once this module is sure to finish it, so a
 * frame handed back is exactly as if this module had never seen it. The SA state stays in the
 * Python objects the reference path uses (SecurityAssociation, ReplayWindow, EspAead): both
 * paths read and write the same state, and the AEAD is the `cryptography` package's AESGCM.
 * The tests run every agent test both ways and compare the two paths byte for byte. What an
 * inbound frame's opening shares with the host stack's fast path (frame parsing, the replay
 * window, the AEAD call, the trailer) is in esp_open.h; the slots of Python objects are
 * pyslots.h's, network byte order wire/byteorder.h's.
 */
#include "agent/esp_open.h"
#ifdef __linux__
#include <sys/mman.h>
#endif

#define META_TAG_LEN 6
#define TX_OFFLOAD 0x80000000u
#define TX_RESERVED 0x7F000000u
#define RX_IPSEC 0x80000000u

/* The fields of the SecurityAssociation this module reads and writes (its `__slots__`); those
 * of ReplayWindow and EspAead are esp_open.h's EspTypes. */
enum {
    SA_SRC, SA_LIFETIME_PACKETS, SA_LIFETIME_BYTES, SA_PACKETS, SA_BYTES, SA_IVDB, SA_ESN,
    SA_AEAD, SA_INDEX, SA_REPLAY, SA_WATCH_PACKETS, SA_WATCH_BYTES, SA_WATCH_SEQ,
    FIELDS
};
static const char *const field_names[FIELDS] = {
    "src", "lifetime_packets", "lifetime_bytes", "packets", "bytes", "ivdb", "esn",
    "_aead", "index", "replay", "watch_packets", "watch_bytes", "watch_seq",
};

/* The frame's VLAN stack as a VlanKey: ((TPID, VID), ...). New reference or NULL. */
static PyObject *vlan_key(const Frame *f) {
    PyObject *key = PyTuple_New(f->nvlans);
    if (key == NULL)
        return NULL;
    for (int i = 0; i < f->nvlans; i++) {
        PyObject *tag = Py_BuildValue("(II)", f->tpid[i], f->vid[i]);
        if (tag == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        PyTuple_SET_ITEM(key, i, tag);
    }
    return key;
}

/* -- the SAD's hash table ---------------------------------------------------------------- */

/* Theory of operation: the SAD as the engine holds it, beside the dict the reference path
 * uses (SecurityAssociationDatabase keeps both). The SAs sit in an array by SA index (the
 * SAD's entries, 1..capacity), and two hash indexes map a packed key to an SA index, one per
 * key width as a hardware table has them: narrow keys (an IPv4 destination and at most one
 * VLAN, 24 bytes) two to a 64-byte line, wide keys (an IPv6 destination or two VLANs, 40
 * bytes) one to a line. The narrow index has at least twice as many lines as the SAD has
 * entries and the wide one four times, so that a narrow key is in its home line all but about
 * 3 times in 100, and a wide one all but about 1 in 8. An index is open addressing
 * with linear probing over its entries in order, deletion by shifting the next entries back
 * (no tombstones). A burst is looked up in passes: the first hashes every key, the second
 * loads each key's home line, the third probes them in order. The memory latency of a large
 * table then overlaps across the burst, as a hardware pipeline keeps many lookups in flight;
 * the third pass is the real lookup, so a change to the SAD between two frames of a burst is
 * seen as it happens. */

#define KEY_LEN 40
#define NARROW_KEY_LEN 24
#define LINE 64
#define NARROW_LINES_PER_SA 2
#define WIDE_LINES_PER_SA 4
#define DIR_INBOUND 0 /* wire.config.Direction */
#define DIR_OUTBOUND 1

/* An entry of an index: the low half of its key's hash (which holds its home line's number),
 * its SA index (0: empty), its key. */
typedef struct {
    uint32_t hash;
    uint32_t index;
    uint8_t key[];
} Entry;

/* A hash index of one key width: `mask + 1` lines of `1 << shift` entries of `size` bytes. */
typedef struct {
    uint8_t *lines;
    uint64_t mask, entry_mask;
    unsigned shift;
    size_t size, key_len;
} Index;

typedef struct {
    PyObject_HEAD
    PyObject **sas; /* by SA index, strong references; NULL until initialised */
    Index narrow, wide;
    Py_ssize_t capacity, used;
    Py_ssize_t naive; /* SAs under a naive key: none, and no lookup tries that key */
} SadTable;

static PyTypeObject SadTableType;

/* The packed key: direction, address length, whether it has a domain, VLAN count; SPI; the
 * destination's first 4 bytes; for the extended key the local MAC and the first VLAN's (TPID,
 * VID); then the rest of an IPv6 destination and the second VLAN. A narrow key is all zeros
 * after its first NARROW_KEY_LEN bytes. */
static void pack_key(uint8_t key[KEY_LEN], int direction, uint32_t spi, const uint8_t *dst,
                     Py_ssize_t addr_len, const uint8_t *mac, int nvlans, const unsigned *tpid,
                     const unsigned *vid) {
    static const int vlan_at[MAX_VLANS] = {18, 36};
    memset(key, 0, KEY_LEN);
    key[0] = (uint8_t)direction;
    key[1] = (uint8_t)addr_len;
    key[2] = mac != NULL;
    wr32(key + 4, spi);
    memcpy(key + 8, dst, 4);
    memcpy(key + 24, dst + 4, (size_t)addr_len - 4);
    if (mac == NULL)
        return;
    key[3] = (uint8_t)nvlans;
    memcpy(key + 12, mac, 6);
    for (int i = 0; i < nvlans; i++) {
        wr16(key + vlan_at[i], tpid[i]);
        wr16(key + vlan_at[i] + 2, vid[i]);
    }
}

static uint64_t key_hash(const uint8_t key[KEY_LEN]) {
    uint64_t h = 0x243F6A8885A308D3u, word;
    for (int i = 0; i < KEY_LEN; i += 8) {
        memcpy(&word, key + i, 8);
        h = (h ^ word) * 0x9E3779B97F4A7C15u;
        h ^= h >> 31;
    }
    return h;
}

/* The index a packed key belongs in. */
static const Index *index_of(const SadTable *t, const uint8_t key[KEY_LEN]) {
    return key[1] == 4 && key[3] <= 1 ? &t->narrow : &t->wide;
}

static Entry *entry_at(const Index *x, uint64_t position) {
    return (Entry *)(x->lines + position * x->size);
}

/* Where a key hashed to `h` starts its probe: the first entry of its home line. */
static uint64_t home(const Index *x, uint64_t h) { return (h & x->mask) << x->shift; }

/* Whether an entry's key is `key`. Each width's length is a constant, so that the compiler
 * compares the words inline: a call to memcmp made the probe pass too long to overlap the
 * burst's cache misses (docs/performance.md, "SAD lookups"). */
static int key_equal(const Index *x, const uint8_t *entry_key, const uint8_t key[KEY_LEN]) {
    if (x->key_len == NARROW_KEY_LEN)
        return memcmp(entry_key, key, NARROW_KEY_LEN) == 0;
    return memcmp(entry_key, key, KEY_LEN) == 0;
}

static Entry *table_find(const SadTable *t, const uint8_t key[KEY_LEN], uint64_t h) {
    const Index *x = index_of(t, key);
    for (uint64_t p = home(x, h);; p = (p + 1) & x->entry_mask) {
        Entry *e = entry_at(x, p);
        if (e->index == 0)
            return NULL;
        if (e->hash == (uint32_t)h && key_equal(x, e->key, key))
            return e;
    }
}

/* One lookup in flight: a packet's extended key [0] and naive key [1], and their hashes. */
typedef struct {
    uint8_t key[2][KEY_LEN];
    uint64_t hash[2];
} Probe;

#define PROBE_LINES 2 /* the most lines a probe reads first: its two keys' home lines */

/* The lines a hashed probe reads first, written to `lines`; how many. Its extended key's home
 * line, and its naive key's while some SA is under one. */
static Py_ssize_t probe_lines(const SadTable *t, const Probe *p, const uint8_t **lines) {
    Py_ssize_t n = 0;
    for (int k = 0; k <= (t->naive != 0); k++) {
        const Index *x = index_of(t, p->key[k]);
        lines[n++] = (const uint8_t *)entry_at(x, home(x, p->hash[k]));
    }
    return n;
}

/* Bring a burst's lines into the cache, between hashing and probing: one plain load each, in a
 * loop as short as it can be, so that the processor keeps as many misses in flight as it can
 * (a loop that found each line from its key held a third as many). On the virtual machine
 * measured, loads did better, and more reliably, than prefetch instructions
 * (docs/performance.md, "SAD lookups"). */
static void touch_lines(const uint8_t *const *lines, Py_ssize_t n) {
    volatile uint8_t sink;
    uint8_t seen = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        seen ^= *lines[i];
    sink = seen;
    (void)sink;
}

/* SecurityAssociationDatabase.lookup of a hashed probe: the extended key first, then the
 * naive key. The SA index, 0 when there is no SA. */
static uint32_t probe_index(const SadTable *t, const Probe *p) {
    const Entry *e = table_find(t, p->key[0], p->hash[0]);
    if (e == NULL && t->naive)
        e = table_find(t, p->key[1], p->hash[1]);
    return e == NULL ? 0 : e->index;
}

/* The key of a Python SAD index key: (direction, SPI, destination) or (direction, SPI,
 * destination, MAC, ((TPID, VID), ...)), as SecurityAssociationDatabase builds them; with
 * `naive`, the naive key of either. 0, or -1 with an error set. */
static int pack_tuple(PyObject *tuple, uint8_t key[KEY_LEN], int naive) {
    unsigned long direction, spi;
    unsigned tpid[MAX_VLANS], vid[MAX_VLANS];
    PyObject *dst, *mac = NULL, *vlans = NULL;
    Py_ssize_t n = PyTuple_Check(tuple) ? PyTuple_GET_SIZE(tuple) : 0, nvlans = 0;
    if (n != 3 && n != 5)
        goto bad;
    direction = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(tuple, 0));
    spi = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(tuple, 1));
    if (PyErr_Occurred())
        return -1;
    dst = PyTuple_GET_ITEM(tuple, 2);
    if (direction > 1 || spi > 0xFFFFFFFFu || !PyBytes_Check(dst) ||
        (PyBytes_GET_SIZE(dst) != 4 && PyBytes_GET_SIZE(dst) != 16))
        goto bad;
    if (n == 5 && !naive) {
        mac = PyTuple_GET_ITEM(tuple, 3);
        vlans = PyTuple_GET_ITEM(tuple, 4);
        if (!PyBytes_Check(mac) || PyBytes_GET_SIZE(mac) != 6 || !PyTuple_Check(vlans) ||
            (nvlans = PyTuple_GET_SIZE(vlans)) > MAX_VLANS)
            goto bad;
        for (Py_ssize_t i = 0; i < nvlans; i++) {
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(vlans, i), "II", &tpid[i], &vid[i]))
                return -1;
        }
    }
    pack_key(key, (int)direction, (uint32_t)spi, (const uint8_t *)PyBytes_AS_STRING(dst),
             PyBytes_GET_SIZE(dst), mac ? (const uint8_t *)PyBytes_AS_STRING(mac) : NULL,
             (int)nvlans, tpid, vid);
    return 0;
bad:
    PyErr_SetString(PyExc_TypeError,
                    "an SAD key is (direction, SPI, destination) or (direction, SPI, destination,"
                    " MAC, ((TPID, VID), ...)) with a 4- or 16-byte destination and a 6-byte MAC");
    return -1;
}

/* Whether the table is initialised and not cleared: 0, or -1 with an error set. */
static int table_ready(const SadTable *t) {
    if (t->sas != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "the SAD table is not initialised");
    return -1;
}

static PyObject *SadTable_insert(SadTable *self, PyObject *args) {
    PyObject *tuple, *sa;
    uint8_t key[KEY_LEN];
    uint64_t h, p;
    unsigned long index;
    const Index *x;
    Entry *e;
    if (!PyArg_ParseTuple(args, "OOk", &tuple, &sa, &index) || table_ready(self) ||
        pack_tuple(tuple, key, 0))
        return NULL;
    if (index < 1 || index > (unsigned long)self->capacity || self->sas[index] != NULL) {
        PyErr_Format(PyExc_ValueError, "SA index %lu is not a free index of 1 .. %zd", index,
                     self->capacity);
        return NULL;
    }
    h = key_hash(key);
    if (table_find(self, key, h) != NULL) {
        PyErr_SetObject(PyExc_KeyError, tuple);
        return NULL;
    }
    x = index_of(self, key);
    for (p = home(x, h); entry_at(x, p)->index != 0; p = (p + 1) & x->entry_mask)
        ;
    e = entry_at(x, p);
    e->hash = (uint32_t)h;
    e->index = (uint32_t)index;
    memcpy(e->key, key, x->key_len);
    self->sas[index] = Py_NewRef(sa);
    self->used++;
    self->naive += key[2] == 0;
    Py_RETURN_NONE;
}

static PyObject *SadTable_remove(SadTable *self, PyObject *tuple) {
    uint8_t key[KEY_LEN];
    uint64_t h, i, j;
    uint32_t index;
    const Index *x;
    Entry *e;
    if (table_ready(self) || pack_tuple(tuple, key, 0))
        return NULL;
    h = key_hash(key);
    e = table_find(self, key, h);
    if (e == NULL) {
        PyErr_SetObject(PyExc_KeyError, tuple);
        return NULL;
    }
    index = e->index;
    self->used--;
    self->naive -= key[2] == 0;
    /* shift back every following entry of the run whose home is not between the hole and it */
    x = index_of(self, key);
    i = (uint64_t)((uint8_t *)e - x->lines) / x->size;
    for (j = (i + 1) & x->entry_mask; entry_at(x, j)->index != 0; j = (j + 1) & x->entry_mask) {
        uint64_t from = home(x, entry_at(x, j)->hash);
        if (((j - from) & x->entry_mask) >= ((j - i) & x->entry_mask)) {
            memcpy(entry_at(x, i), entry_at(x, j), x->size);
            i = j;
        }
    }
    memset(entry_at(x, i), 0, x->size);
    Py_CLEAR(self->sas[index]);
    Py_RETURN_NONE;
}

static PyObject *SadTable_get(SadTable *self, PyObject *tuple) {
    uint8_t key[KEY_LEN];
    const Entry *e;
    if (table_ready(self) || pack_tuple(tuple, key, 0))
        return NULL;
    e = table_find(self, key, key_hash(key));
    return Py_NewRef(e == NULL ? Py_None : self->sas[e->index]);
}

/* The SA index of each packet key (direction, SPI, destination, MAC, VLAN key) of a burst
 * (0: none), as the engine's lookup stage yields it: the extended key first, then the naive
 * key. In the passes of the theory of operation.
 *
 * Packing a key can run Python code (a VLAN's TPID or VID is read with its __index__), which
 * may change or empty the list: the keys are taken from a tuple made of it first, which holds
 * a reference to each key for the whole call. */
static PyObject *SadTable_lookup_burst(SadTable *self, PyObject *list) {
    Py_ssize_t n, nlines = 0;
    Probe *probes = NULL;
    const uint8_t **lines;
    PyObject *keys, *result = NULL;
    if (table_ready(self))
        return NULL;
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "lookup_burst takes a list of keys");
        return NULL;
    }
    keys = PyList_AsTuple(list);
    if (keys == NULL)
        return NULL;
    n = PyTuple_GET_SIZE(keys);
    probes = PyMem_Malloc((sizeof *probes + PROBE_LINES * sizeof *lines) * (size_t)(n ? n : 1));
    if (probes == NULL) {
        Py_DECREF(keys);
        return PyErr_NoMemory();
    }
    lines = (const uint8_t **)(probes + n);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyTuple_GET_ITEM(keys, i);
        if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 5) {
            PyErr_SetString(PyExc_TypeError, "a packet key is (direction, SPI, dst, MAC, VLANs)");
            goto done;
        }
        if (pack_tuple(key, probes[i].key[0], 0) || pack_tuple(key, probes[i].key[1], 1))
            goto done;
    }
    /* the keys are packed and no Python code runs from here: the table stays as it is */
    if (table_ready(self))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        probes[i].hash[0] = key_hash(probes[i].key[0]);
        probes[i].hash[1] = key_hash(probes[i].key[1]);
        nlines += probe_lines(self, &probes[i], lines + nlines);
    }
    touch_lines(lines, nlines);
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *index = PyLong_FromUnsignedLong(probe_index(self, &probes[i]));
        if (index == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, index);
    }
done:
    PyMem_Free(probes);
    Py_DECREF(keys);
    return result;
}

/* An index's memory, zeroed. A large one is random access over many pages: on Linux it asks
 * for transparent huge pages, so that a lookup costs one cache miss, not a TLB miss too. */
#define HUGE_PAGE (2u << 20)
static int index_alloc(Index *x, uint64_t lines, unsigned shift, size_t key_len) {
    size_t bytes = lines * LINE;
    x->mask = lines - 1;
    x->entry_mask = (lines << shift) - 1;
    x->shift = shift;
    x->size = LINE >> shift;
    x->key_len = key_len;
#ifdef __linux__
    if (bytes >= HUGE_PAGE) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        x->lines = p == MAP_FAILED ? NULL : p;
        if (x->lines != NULL)
            madvise(p, bytes, MADV_HUGEPAGE);
        return x->lines == NULL ? -1 : 0;
    }
#endif
    x->lines = PyMem_Calloc(1, bytes);
    return x->lines == NULL ? -1 : 0;
}

static void index_free(Index *x) {
    size_t bytes = (x->mask + 1) * LINE;
    if (x->lines == NULL)
        return;
#ifdef __linux__
    if (bytes >= HUGE_PAGE)
        munmap(x->lines, bytes);
    else
#endif
        PyMem_Free(x->lines);
    x->lines = NULL;
}

static int SadTable_clear(SadTable *self);

static int SadTable_init(SadTable *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"capacity", NULL};
    Py_ssize_t capacity;
    uint64_t narrow = 1, wide = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &capacity))
        return -1;
    if (capacity < 1 || capacity > (1 << 24) || self->sas != NULL) {
        PyErr_SetString(PyExc_ValueError, "capacity must be 1 .. 2^24, set once");
        return -1;
    }
    while (narrow < NARROW_LINES_PER_SA * (uint64_t)capacity)
        narrow *= 2;
    while (wide < WIDE_LINES_PER_SA * (uint64_t)capacity)
        wide *= 2;
    self->capacity = capacity;
    self->sas = PyMem_Calloc((size_t)capacity + 1, sizeof *self->sas);
    if (self->sas == NULL || index_alloc(&self->narrow, narrow, 1, NARROW_KEY_LEN) ||
        index_alloc(&self->wide, wide, 0, KEY_LEN)) {
        SadTable_clear(self);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int SadTable_traverse(SadTable *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 1; self->sas != NULL && i <= self->capacity; i++)
        Py_VISIT(self->sas[i]);
    return 0;
}

/* Drops every SA and the indexes: a cleared table is as one never initialised. */
static int SadTable_clear(SadTable *self) {
    for (Py_ssize_t i = 1; self->sas != NULL && i <= self->capacity; i++)
        Py_CLEAR(self->sas[i]);
    PyMem_Free(self->sas);
    self->sas = NULL;
    index_free(&self->narrow);
    index_free(&self->wide);
    self->used = self->naive = 0;
    return 0;
}

static void SadTable_dealloc(SadTable *self) {
    PyObject_GC_UnTrack(self);
    SadTable_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t SadTable_len(SadTable *self) { return self->used; }

static PyMethodDef SadTable_methods[] = {
    {"insert", (PyCFunction)SadTable_insert, METH_VARARGS,
     "insert(key, sa, index): add an SA and its index under an SAD index key; KeyError if\n"
     "the key is there."},
    {"remove", (PyCFunction)SadTable_remove, METH_O,
     "remove(key): take the SA under an SAD index key out; KeyError if it is not there."},
    {"get", (PyCFunction)SadTable_get, METH_O, "get(key): the SA under an SAD index key, or None."},
    {"lookup_burst", (PyCFunction)SadTable_lookup_burst, METH_O,
     "lookup_burst(keys): the SA index of each packet key (direction, SPI, dst, MAC, VLANs),\n"
     "the extended key first, then the naive key; 0 where there is none."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods SadTable_as_sequence = {.sq_length = (lenfunc)SadTable_len};

static PyTypeObject SadTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipsec_offload.agent._datapath.SadTable",
    .tp_doc = "The SAD's fixed hash table, as the engine looks SAs up.",
    .tp_basicsize = sizeof(SadTable),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SadTable_init,
    .tp_traverse = (traverseproc)SadTable_traverse,
    .tp_clear = (inquiry)SadTable_clear,
    .tp_dealloc = (destructor)SadTable_dealloc,
    .tp_methods = SadTable_methods,
    .tp_as_sequence = &SadTable_as_sequence,
};

/* The probe of a frame's packet of `direction` whose domain MAC is `mac`, hashed. */
static void frame_probe(const Frame *f, int direction, const uint8_t *mac, Probe *p) {
    uint32_t spi = rd32(f->p + f->esp_start);
    pack_key(p->key[0], direction, spi, f->p + f->dst_off, f->addr_len, mac, f->nvlans, f->tpid,
             f->vid);
    pack_key(p->key[1], direction, spi, f->p + f->dst_off, f->addr_len, NULL, 0, NULL, NULL);
    p->hash[0] = key_hash(p->key[0]);
    p->hash[1] = key_hash(p->key[1]);
}

/* SecurityAssociationDatabase.lookup of a frame: a borrowed reference, or NULL. */
static PyObject *sad_lookup(const SadTable *t, int direction, const Frame *f,
                            const uint8_t *mac) {
    Probe p;
    uint32_t index;
    frame_probe(f, direction, mac, &p);
    index = probe_index(t, &p);
    return index == 0 ? NULL : t->sas[index];
}

typedef struct {
    PyObject_HEAD
    SadTable *table;        /* the SAD's hash table */
    PyObject *local_addrs;  /* the hairpin table: set of (MAC, VLAN key) */
    PyObject *invalid_tag;  /* cryptography.exceptions.InvalidTag */
    PyObject *paths;        /* AgentCounters.paths */
    PyObject *rx_status;    /* AgentCounters.rx_status */
    PyObject *tx_encrypted; /* Path.TX_ENCRYPTED */
    PyObject *rx_esp;       /* Path.RX_ESP */
    PyObject *rx_ok;        /* RxStatus.OK */
    unsigned meta_ethertype;
    unsigned config_ethertype;
    int ivdb;
    uint8_t *scratch; /* where a Tx frame's ESP plaintext is put together */
    Py_ssize_t scratch_len;
    PyTypeObject *sa_type;
    EspTypes esp;               /* ReplayWindow and EspAead */
    Py_ssize_t offsets[FIELDS]; /* where each field's slot is in a SecurityAssociation */
} Datapath;

/* A field of a SecurityAssociation: a borrowed reference, NULL when the slot is empty. */
static inline PyObject *field(const Datapath *self, PyObject *sa, int which) {
    return slot_get(sa, self->offsets[which]);
}

/* An unsigned 64-bit field; -1 (error cleared) when it is not one. */
static int get_u64(const Datapath *self, PyObject *sa, int which, uint64_t *out) {
    return slot_u64(sa, self->offsets[which], out);
}

static int set_u64(const Datapath *self, PyObject *sa, int which, uint64_t v) {
    return slot_set_u64(sa, self->offsets[which], v);
}

/* What this module needs of an SA that may carry the frame. */
typedef struct {
    uint64_t packets, bytes, index;
    uint64_t watch_bytes, watch_seq; /* 0: none (SecurityAssociation.watch_*) */
    int esn;
    PyObject *aead; /* new reference */
} SaState;

/* Whether `sa` can carry the frame here: the SA's source address, if it has one, is the
 * packet's; no hard lifetime is reached (SecurityAssociation.expired); one more packet does
 * not reach its packet watch (a soft or hard lifetime whose event the reference path raises,
 * spec 9) nor is its byte watch reached; its cipher context exists (the reference path creates
 * it on the SA's first packet). 0 with `st` filled (its `aead` a new reference), -1 (error
 * cleared) when not. The caller checks the frame's bytes and sequence number against
 * `st->watch_bytes` and `st->watch_seq`. */
static int sa_usable(const Datapath *self, PyObject *sa, const Frame *f, SaState *st) {
    uint64_t lifetime_packets, lifetime_bytes, watch_packets;
    PyObject *src, *esn, *aead;
    if (Py_TYPE(sa) != self->sa_type)
        return -1;
    src = field(self, sa, SA_SRC);
    if (src == NULL ||
        (src != Py_None &&
         !(PyBytes_CheckExact(src) && PyBytes_GET_SIZE(src) == f->addr_len &&
           memcmp(PyBytes_AS_STRING(src), f->p + f->src_off, (size_t)f->addr_len) == 0)))
        return -1;
    if (get_u64(self, sa, SA_PACKETS, &st->packets) || get_u64(self, sa, SA_BYTES, &st->bytes) ||
        get_u64(self, sa, SA_LIFETIME_PACKETS, &lifetime_packets) ||
        get_u64(self, sa, SA_LIFETIME_BYTES, &lifetime_bytes) ||
        get_u64(self, sa, SA_INDEX, &st->index) ||
        get_u64(self, sa, SA_WATCH_PACKETS, &watch_packets) ||
        get_u64(self, sa, SA_WATCH_BYTES, &st->watch_bytes) ||
        get_u64(self, sa, SA_WATCH_SEQ, &st->watch_seq))
        return -1;
    if ((lifetime_packets && st->packets >= lifetime_packets) ||
        (lifetime_bytes && st->bytes >= lifetime_bytes))
        return -1;
    if ((watch_packets && st->packets >= watch_packets - 1) ||
        (st->watch_bytes && st->bytes >= st->watch_bytes))
        return -1;
    esn = field(self, sa, SA_ESN);
    aead = field(self, sa, SA_AEAD);
    if (esn == NULL || aead == NULL || Py_TYPE(aead) != self->esp.aead_type)
        return -1;
    st->esn = esn == Py_True;
    st->aead = Py_NewRef(aead);
    return 0;
}

/* Whether `dst` and the frame's VLANs are in the hairpin table (agent._forward turns such
 * frames around, and sends multicast both ways): 1 yes, 0 no, -1 error. */
static int hairpinned(Datapath *self, const Frame *f) {
    PyObject *vlans, *key;
    int found;
    if (PySet_GET_SIZE(self->local_addrs) == 0)
        return 0;
    if (f->p[0] & 1)
        return 1;
    vlans = vlan_key(f);
    if (vlans == NULL)
        return -1;
    key = Py_BuildValue("(y#N)", f->p, (Py_ssize_t)6, vlans);
    if (key == NULL)
        return -1;
    found = PySet_Contains(self->local_addrs, key);
    Py_DECREF(key);
    return found;
}

/* The IP header for a packet of `new_len` bytes, written at `out` (agent._resize_ip): IPv4
 * with the total length and its checksum updated (RFC 1624), IPv6 with the payload length. */
static void write_ip_header(const Frame *f, uint8_t *out, Py_ssize_t new_len) {
    Py_ssize_t header_len = f->esp_start - f->l3;
    memcpy(out, f->p + f->l3, (size_t)header_len);
    if (f->addr_len == 4) {
        long checksum = ((long)f->ip_checksum + (long)f->ip_length - (long)new_len) % 0xFFFF;
        wr16(out + 2, (unsigned)new_len);
        wr16(out + 10, (unsigned)(checksum < 0 ? checksum + 0xFFFF : checksum));
    } else {
        wr16(out + 4, (unsigned)(new_len - 40));
    }
}

/* -- Tx ----------------------------------------------------------------------------------- */

/* The headers of a Tx frame that is the common case as far as they tell (agent._host_frame
 * and _locate_esp): 0 with `f` and the metadata `word` filled, or -1. */
static int tx_headers(const Datapath *self, PyObject *frame, Frame *f, uint32_t *word) {
    if (!PyBytes_CheckExact(frame))
        return -1;
    f->p = (const uint8_t *)PyBytes_AS_STRING(frame);
    f->len = PyBytes_GET_SIZE(frame);
    /* spec 3: the metadata tag outermost, then VLAN tags and the EtherType */
    if (f->len < 12 + META_TAG_LEN + 2 || rd16(f->p + 12) != self->meta_ethertype)
        return -1;
    *word = rd32(f->p + 14);
    if (parse_vlans(f, 12 + META_TAG_LEN) || *word & TX_RESERVED || !(*word & TX_OFFLOAD))
        return -1;
    /* spec 3: L3_OFFSET counts from the frame without its tag */
    if ((Py_ssize_t)((*word >> 8) & 0xFF) != f->l3 - META_TAG_LEN)
        return -1;
    return locate_esp(f, (Py_ssize_t)(*word & 0xFF) * 4);
}

/* Encrypt one Tx frame (agent._encrypt). A new reference to the wire frame; Py_None (new
 * reference) when the frame is not the common case; NULL on error. */
static PyObject *tx_frame(Datapath *self, PyObject *frame) {
    Frame f;
    uint32_t word, spi;
    uint64_t seq, next_ivdb = 0, limit;
    unsigned next_header;
    Py_ssize_t payload_len, pad, sealed_len, new_len, header_len, l2_out, total;
    PyObject *sa, *out = NULL;
    SaState st = {0};
    int rc;

    if (tx_headers(self, frame, &f, &word))
        Py_RETURN_NONE;
    next_header = (word >> 16) & 0xFF;
    rc = hairpinned(self, &f);
    if (rc < 0)
        return NULL;
    spi = rd32(f.p + f.esp_start);
    seq = rd64(f.p + f.esp_start + ESP_HEADER_LEN); /* the IV the stack wrote */
    sa = rc ? NULL : sad_lookup(self->table, DIR_OUTBOUND, &f, f.p + 6);
    if (sa == NULL)
        Py_RETURN_NONE;
    Py_INCREF(sa);
    if (sa_usable(self, sa, &f, &st))
        goto slow;
    if (self->ivdb) {
        /* spec 7: the IVDB rule */
        uint64_t ivdb;
        if (get_u64(self, sa, SA_IVDB, &ivdb))
            goto slow;
        if (ivdb <= seq) {
            if (seq == UINT64_MAX)
                goto slow;
            next_ivdb = seq + 1;
        } else {
            if (ivdb == UINT64_MAX)
                goto slow;
            seq = ivdb;
            next_ivdb = ivdb + 1;
        }
    }
    limit = st.esn ? UINT64_MAX : 0xFFFFFFFFu;
    if (seq == 0 || seq > limit)
        goto slow;
    if (st.watch_seq && seq >= st.watch_seq)
        goto slow; /* SEQ_SOFT_LIMIT: the reference path raises it */
    payload_len = f.ip_end - (f.esp_start + ESP_HEADER_LEN + ESP_IV_LEN);
    if (st.watch_bytes && (uint64_t)payload_len >= st.watch_bytes - st.bytes)
        goto slow; /* a byte lifetime reached: the reference path raises its event */
    pad = (4 - (payload_len + 2) % 4) % 4; /* RFC 4303 2.4: pad to 4 bytes */
    sealed_len = payload_len + pad + 2 + ICV_LEN;
    header_len = f.esp_start - f.l3;
    new_len = header_len + ESP_HEADER_LEN + ESP_IV_LEN + sealed_len;
    if (new_len - (f.addr_len == 4 ? 0 : 40) > 0xFFFF)
        goto slow;

    /* the ESP plaintext: payload || padding 1, 2, 3, ... || pad length || next header */
    if (self->scratch_len < payload_len + pad + 2) {
        uint8_t *grown = PyMem_Realloc(self->scratch, (size_t)(payload_len + pad + 2));
        if (grown == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        self->scratch = grown;
        self->scratch_len = payload_len + pad + 2;
    }
    memcpy(self->scratch, f.p + f.ip_end - payload_len, (size_t)payload_len);
    for (Py_ssize_t i = 0; i < pad; i++)
        self->scratch[payload_len + i] = (uint8_t)(i + 1);
    self->scratch[payload_len + pad] = (uint8_t)pad;
    self->scratch[payload_len + pad + 1] = (uint8_t)next_header;
    /* the frame without its tag: MACs, the rest of the L2 header, IP header, ESP packet */
    l2_out = f.l3 - META_TAG_LEN;
    total = l2_out + header_len + ESP_HEADER_LEN + ESP_IV_LEN + sealed_len;
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto error;
    {
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        memcpy(o, f.p, 12);
        memcpy(o + 12, f.p + 12 + META_TAG_LEN, (size_t)(l2_out - 12));
        o += l2_out;
        write_ip_header(&f, o, new_len);
        o += header_len;
        wr32(o, spi);
        wr32(o + 4, (uint32_t)seq);
        wr64(o + 8, seq);
        if (aead_call(&self->esp, st.aead, 0, o + 8, spi, seq, st.esn, self->scratch,
                      payload_len + pad + 2, o + 16, sealed_len))
            goto error;
    }
    if ((self->ivdb && set_u64(self, sa, SA_IVDB, next_ivdb)) ||
        set_u64(self, sa, SA_PACKETS, st.packets + 1) ||
        set_u64(self, sa, SA_BYTES, st.bytes + (uint64_t)payload_len))
        goto error;
    Py_DECREF(st.aead);
    Py_DECREF(sa);
    return out;

slow:
    Py_XDECREF(st.aead);
    Py_DECREF(sa);
    Py_RETURN_NONE;
error:
    Py_XDECREF(out);
    Py_XDECREF(st.aead);
    Py_DECREF(sa);
    return NULL;
}

/* -- Rx ----------------------------------------------------------------------------------- */

/* The headers of a frame from the wire that is the common case as far as they tell
 * (agent._ingress and _locate_esp): 0 with `f` filled, or -1. */
static int rx_headers(const Datapath *self, PyObject *frame, Frame *f) {
    Py_ssize_t body;
    if (!PyBytes_CheckExact(frame))
        return -1;
    f->p = (const uint8_t *)PyBytes_AS_STRING(frame);
    f->len = PyBytes_GET_SIZE(frame);
    if (f->len < 14 || parse_vlans(f, 12) || f->ethertype == self->config_ethertype ||
        locate_esp(f, -1))
        return -1;
    body = f->ip_end - f->esp_start - ESP_HEADER_LEN - ESP_IV_LEN - ICV_LEN;
    return body < 4 || body % 4 ? -1 : 0;
}

/* Decrypt one frame from the wire (agent._ingress). A new reference to the host frame with
 * its Rx tag; Py_None (new reference) when the frame is not the common case; NULL on error. */
static PyObject *rx_frame(Datapath *self, PyObject *frame) {
    Frame f;
    uint32_t spi, seq_lo, word;
    uint64_t seq, top, size;
    Py_ssize_t ct_start, pt_len, payload_len, header_len, total;
    PyObject *sa = NULL, *replay = NULL, *out = NULL;
    uint8_t *o, *pt;
    SaState st = {0};

    if (rx_headers(self, frame, &f))
        Py_RETURN_NONE;
    ct_start = f.esp_start + ESP_HEADER_LEN + ESP_IV_LEN;
    spi = rd32(f.p + f.esp_start);
    seq_lo = rd32(f.p + f.esp_start + 4);
    sa = sad_lookup(self->table, DIR_INBOUND, &f, f.p);
    if (sa == NULL)
        Py_RETURN_NONE;
    Py_INCREF(sa);
    if (sa_usable(self, sa, &f, &st))
        goto slow;
    replay = field(self, sa, SA_REPLAY);
    if (replay == NULL)
        goto slow;
    Py_INCREF(replay);
    if (replay_ahead(&self->esp, replay, seq_lo, st.esn, &seq, &top, &size))
        goto slow;
    header_len = f.esp_start - f.l3;
    pt_len = f.ip_end - ct_start - ICV_LEN;
    total = f.l3 + META_TAG_LEN + header_len + ESP_HEADER_LEN + ESP_IV_LEN + pt_len;
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto error;
    /* decrypted in place and tagged: L2 | tag | ... | IP | ESP header | IV | plaintext */
    o = (uint8_t *)PyBytes_AS_STRING(out);
    pt = o + total - pt_len;
    if (aead_call(&self->esp, st.aead, 1, f.p + ct_start - ESP_IV_LEN, spi, seq, st.esn,
                  f.p + ct_start, f.ip_end - ct_start, pt, pt_len)) {
        if (!PyErr_ExceptionMatches(self->invalid_tag))
            goto error;
        PyErr_Clear(); /* AUTH_FAILED: the reference path counts it */
        goto slow;
    }
    payload_len = esp_trailer(pt, pt_len);
    if (payload_len < 0)
        goto slow;
    if (st.watch_bytes && (uint64_t)payload_len >= st.watch_bytes - st.bytes)
        goto slow; /* a byte lifetime reached: the reference path raises its event */
    word = RX_IPSEC | (uint32_t)(st.index & 0x00FFFFFF); /* status OK is 0 */
    memcpy(o, f.p, 12);
    wr16(o + 12, self->meta_ethertype);
    wr32(o + 14, word);
    memcpy(o + 12 + META_TAG_LEN, f.p + 12, (size_t)(f.l3 - 12));
    write_ip_header(&f, o + f.l3 + META_TAG_LEN, f.ip_end - f.l3 - ICV_LEN);
    memcpy(o + f.l3 + META_TAG_LEN + header_len, f.p + f.esp_start,
           ESP_HEADER_LEN + ESP_IV_LEN);
    if (replay_slide(&self->esp, replay, seq, top, size) ||
        set_u64(self, sa, SA_PACKETS, st.packets + 1) ||
        set_u64(self, sa, SA_BYTES, st.bytes + (uint64_t)payload_len))
        goto error;
    Py_DECREF(replay);
    Py_DECREF(st.aead);
    Py_DECREF(sa);
    return out;

slow:
    Py_XDECREF(out);
    Py_XDECREF(replay);
    Py_XDECREF(st.aead);
    Py_DECREF(sa);
    Py_RETURN_NONE;
error:
    Py_XDECREF(out);
    Py_XDECREF(replay);
    Py_XDECREF(st.aead);
    Py_DECREF(sa);
    return NULL;
}

/* -- the burst calls ------------------------------------------------------------------------ */

typedef PyObject *(*FrameFn)(Datapath *, PyObject *);

/* The first passes over a burst (see the SAD table): hash its frames' SAD keys and bring their
 * home lines into the cache. */
static int cache_lines(Datapath *self, PyObject *frames, int tx) {
    Frame f;
    Probe probe;
    uint32_t word;
    Py_ssize_t nlines = 0, size = PyList_GET_SIZE(frames);
    const uint8_t **lines = PyMem_Malloc(PROBE_LINES * sizeof *lines * (size_t)(size ? size : 1));
    if (lines == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *frame = PyList_GET_ITEM(frames, i);
        if (tx ? tx_headers(self, frame, &f, &word) : rx_headers(self, frame, &f))
            continue;
        frame_probe(&f, tx ? DIR_OUTBOUND : DIR_INBOUND, tx ? f.p + 6 : f.p, &probe);
        nlines += probe_lines(self->table, &probe, lines + nlines);
    }
    touch_lines(lines, nlines);
    PyMem_Free(lines);
    return 0;
}

static int count(PyObject *counters, PyObject *key, Py_ssize_t n) {
    PyObject *old, *add, *sum;
    int rc;
    if (n == 0)
        return 0;
    old = PyDict_GetItemWithError(counters, key);
    if (old == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "counter missing");
        return -1;
    }
    add = PyLong_FromSsize_t(n);
    if (add == NULL)
        return -1;
    sum = PyNumber_Add(old, add);
    Py_DECREF(add);
    if (sum == NULL)
        return -1;
    rc = PyDict_SetItem(counters, key, sum);
    Py_DECREF(sum);
    return rc;
}

/* Whether __init__ has run and the SAD table it was given is still initialised (a Datapath
 * made by Datapath.__new__ alone holds no table, counters nor types): 0, or -1 with an error
 * set. */
static int datapath_ready(const Datapath *self) {
    if (self->table == NULL || self->sa_type == NULL || self->paths == NULL) {
        PyErr_SetString(PyExc_ValueError, "the Datapath is not initialised");
        return -1;
    }
    return table_ready(self->table);
}

/* Handle frames[start:] in order while each is the common case, appending the results to
 * `out`; returns the position of the first frame left to the reference path (len when none).
 * `counters` are the (dict, key) pairs one handled frame adds 1 to. The list's length is read
 * again before each frame: a frame's AEAD call goes through Python objects. */
static PyObject *burst(Datapath *self, PyObject *args, FrameFn fn, PyObject *counters[2][2]) {
    PyObject *frames, *out, *result;
    Py_ssize_t start, i, n;
    if (datapath_ready(self))
        return NULL;
    if (!PyArg_ParseTuple(args, "O!nO!", &PyList_Type, &frames, &start, &PyList_Type, &out))
        return NULL;
    n = PyList_GET_SIZE(frames);
    if (start < 0 || start > n) {
        PyErr_SetString(PyExc_IndexError, "start must be 0..len(frames)");
        return NULL;
    }
    /* a burst's lines are cached once, by the call that starts it; the calls that go on
     * after a frame the reference path took find the rest of them cached already */
    if (start == 0 && cache_lines(self, frames, fn == tx_frame))
        return NULL;
    for (i = start; i < PyList_GET_SIZE(frames); i++) {
        PyObject *frame = PyList_GET_ITEM(frames, i);
        Py_INCREF(frame);
        result = fn(self, frame);
        Py_DECREF(frame);
        if (result == NULL)
            break;
        if (result == Py_None) {
            Py_DECREF(result);
            break;
        }
        if (PyList_Append(out, result) < 0) {
            Py_DECREF(result);
            break;
        }
        Py_DECREF(result);
    }
    /* the frames before an error were handled: count them, then raise the error */
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    for (int c = 0; c < 2 && counters[c][0] != NULL; c++) {
        if (count(counters[c][0], counters[c][1], i - start) < 0) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            return NULL;
        }
    }
    if (type != NULL) {
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    return PyLong_FromSsize_t(i);
}

static PyObject *Datapath_tx_burst(Datapath *self, PyObject *args) {
    PyObject *counters[2][2] = {{self->paths, self->tx_encrypted}, {NULL, NULL}};
    return burst(self, args, tx_frame, counters);
}

static PyObject *Datapath_rx_burst(Datapath *self, PyObject *args) {
    PyObject *counters[2][2] = {{self->paths, self->rx_esp}, {self->rx_status, self->rx_ok}};
    return burst(self, args, rx_frame, counters);
}

static int Datapath_init(Datapath *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"sad_table",   "local_addrs",      "invalid_tag",
                             "paths",       "rx_status",        "tx_encrypted",
                             "rx_esp",      "rx_ok",            "meta_ethertype",
                             "config_ethertype", "ivdb",        "sa_type",
                             "replay_type", "aead_type",        NULL};
    PyObject *local_addrs, *invalid_tag, *paths, *rx_status, *tx_encrypted, *rx_esp, *rx_ok;
    SadTable *table;
    PyTypeObject *sa_type, *replay_type, *aead_type;
    unsigned meta, config;
    int ivdb;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "O!O!OO!O!OOOIIpO!O!O!", kwlist, &SadTableType, &table, &PySet_Type,
            &local_addrs, &invalid_tag, &PyDict_Type, &paths, &PyDict_Type, &rx_status,
            &tx_encrypted, &rx_esp, &rx_ok, &meta, &config, &ivdb, &PyType_Type,
            &sa_type, &PyType_Type, &replay_type, &PyType_Type, &aead_type))
        return -1;
    if (table->sas == NULL) {
        PyErr_SetString(PyExc_ValueError, "the SAD table is not initialised");
        return -1;
    }
    if (meta > 0xFFFF || config > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "EtherTypes must fit 16 bits");
        return -1;
    }
    for (int i = 0; i < FIELDS; i++)
        if (slot_offset(sa_type, field_names[i], &self->offsets[i]))
            return -1;
    if (esp_types_init(&self->esp, replay_type, aead_type))
        return -1;
#define KEEP(field)              \
    Py_INCREF(field);            \
    Py_XSETREF(self->field, field);
    KEEP(sa_type)
    KEEP(table)
    KEEP(local_addrs)
    KEEP(invalid_tag)
    KEEP(paths)
    KEEP(rx_status)
    KEEP(tx_encrypted)
    KEEP(rx_esp)
    KEEP(rx_ok)
#undef KEEP
    self->meta_ethertype = meta;
    self->config_ethertype = config;
    self->ivdb = ivdb;
    return 0;
}

static int Datapath_traverse(Datapath *self, visitproc visit, void *arg) {
    Py_VISIT(self->table);
    Py_VISIT(self->local_addrs);
    Py_VISIT(self->invalid_tag);
    Py_VISIT(self->paths);
    Py_VISIT(self->rx_status);
    Py_VISIT(self->tx_encrypted);
    Py_VISIT(self->rx_esp);
    Py_VISIT(self->rx_ok);
    Py_VISIT(self->sa_type);
    return esp_types_traverse(&self->esp, visit, arg);
}

static int Datapath_clear(Datapath *self) {
    Py_CLEAR(self->table);
    Py_CLEAR(self->local_addrs);
    Py_CLEAR(self->invalid_tag);
    Py_CLEAR(self->paths);
    Py_CLEAR(self->rx_status);
    Py_CLEAR(self->tx_encrypted);
    Py_CLEAR(self->rx_esp);
    Py_CLEAR(self->rx_ok);
    Py_CLEAR(self->sa_type);
    esp_types_clear(&self->esp);
    return 0;
}

static void Datapath_dealloc(Datapath *self) {
    PyObject_GC_UnTrack(self);
    Datapath_clear(self);
    PyMem_Free(self->scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Datapath_methods[] = {
    {"tx_burst", (PyCFunction)Datapath_tx_burst, METH_VARARGS,
     "tx_burst(frames, start, to_wire) -> int: encrypt frames[start:] onto to_wire while each\n"
     "is the common case; the position of the first frame left to the reference path."},
    {"rx_burst", (PyCFunction)Datapath_rx_burst, METH_VARARGS,
     "rx_burst(frames, start, to_host) -> int: decrypt frames[start:] onto to_host while each\n"
     "is the common case; the position of the first frame left to the reference path."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DatapathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipsec_offload.agent._datapath.Datapath",
    .tp_doc = "The agent's compiled fast path over the agent's own SAD and counters.",
    .tp_basicsize = sizeof(Datapath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Datapath_init,
    .tp_traverse = (traverseproc)Datapath_traverse,
    .tp_clear = (inquiry)Datapath_clear,
    .tp_dealloc = (destructor)Datapath_dealloc,
    .tp_methods = Datapath_methods,
};

static struct PyModuleDef datapath_module = {
    PyModuleDef_HEAD_INIT, .m_name = "ipsec_offload.agent._datapath",
    .m_doc = "The agent's compiled fast path (see agent.py and docs/performance.md).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__datapath(void) {
    PyObject *module;
    if (esp_open_ready() < 0)
        return NULL;
    if (PyType_Ready(&DatapathType) < 0 || PyType_Ready(&SadTableType) < 0)
        return NULL;
    module = PyModule_Create(&datapath_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddType(module, &DatapathType) < 0 ||
        PyModule_AddType(module, &SadTableType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
