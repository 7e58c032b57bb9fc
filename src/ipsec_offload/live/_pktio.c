/* Batched frame I/O for live mode (packet_socket.py is the reference: the same frames, in the
 * same order, with the same VLAN tags put back).
 *
 * recv_burst(fd, limit) -> list[bytes]: up to `limit` (1..64) datagrams with one recvmmsg,
 *     never waiting; a VLAN tag the kernel moved into PACKET_AUXDATA is put back after the
 *     MAC addresses (TPID 0x8100 unless the kernel gives one).
 * send_burst(fd, frames) -> (sent, refused): sendmmsg in runs of 64; a full queue is waited
 *     out (poll), a frame the socket refuses (too long, say) is counted and skipped.
 * ring_recv(fd, ring, frame_size, head, limit) -> (frames, head, truncated): up to `limit`
 *     frames from a mapped TPACKET_V2 receive ring (packet_socket.RxRing is the reference),
 *     starting at slot `head`, each slot handed back to the kernel once copied; a slot marked
 *     TP_STATUS_COPY is read whole from the socket's queue (PACKET_COPY_THRESH), and one
 *     cut short, or whose header points outside its slot, is counted in `truncated`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#define BURST 64
#define FRAME_MAX (65535 + 18)
#define CONTROL_MAX 64

static unsigned char frames_buf[BURST][FRAME_MAX];
static unsigned char control_buf[BURST][CONTROL_MAX];

static int vlan_of(struct msghdr *msg, unsigned char tag[4]) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_PACKET || c->cmsg_type != PACKET_AUXDATA) continue;
        if (c->cmsg_len < CMSG_LEN(sizeof(struct tpacket_auxdata))) continue;
        struct tpacket_auxdata aux;
        memcpy(&aux, CMSG_DATA(c), sizeof aux);
        if (!(aux.tp_status & TP_STATUS_VLAN_VALID)) return 0;
        unsigned int tpid = (aux.tp_status & TP_STATUS_VLAN_TPID_VALID) ? aux.tp_vlan_tpid : 0x8100;
        tag[0] = (unsigned char)(tpid >> 8);
        tag[1] = (unsigned char)tpid;
        tag[2] = (unsigned char)(aux.tp_vlan_tci >> 8);
        tag[3] = (unsigned char)aux.tp_vlan_tci;
        return 1;
    }
    return 0;
}

static PyObject *vlan_frame(const unsigned char *data, size_t len, int tagged,
                            const unsigned char tag[4]) {
    if (!tagged || len < 12) return PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    PyObject *frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len + 4);
    if (frame != NULL) {
        char *to = PyBytes_AS_STRING(frame);
        memcpy(to, data, 12);
        memcpy(to + 12, tag, 4);
        memcpy(to + 16, data + 12, len - 12);
    }
    return frame;
}

static PyObject *recv_burst(PyObject *self, PyObject *args) {
    (void)self;
    int fd, limit;
    if (!PyArg_ParseTuple(args, "ii", &fd, &limit)) return NULL;
    if (limit < 1 || limit > BURST) {
        PyErr_Format(PyExc_ValueError, "limit %d: give 1 .. %d", limit, BURST);
        return NULL;
    }
    struct mmsghdr msgs[BURST];
    struct iovec iov[BURST];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < limit; i++) {
        iov[i].iov_base = frames_buf[i];
        iov[i].iov_len = FRAME_MAX;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = control_buf[i];
        msgs[i].msg_hdr.msg_controllen = CONTROL_MAX;
    }
    int got;
    Py_BEGIN_ALLOW_THREADS
    got = recvmmsg(fd, msgs, (unsigned int)limit, MSG_DONTWAIT, NULL);
    Py_END_ALLOW_THREADS
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(got);
    if (out == NULL) return NULL;
    for (int i = 0; i < got; i++) {
        size_t len = msgs[i].msg_len;
        if (len > FRAME_MAX) len = FRAME_MAX;
        unsigned char tag[4];
        int tagged = vlan_of(&msgs[i].msg_hdr, tag);
        PyObject *frame = vlan_frame(frames_buf[i], len, tagged, tag);
        if (frame == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, frame);
    }
    return out;
}

/* One datagram from the socket's queue, VLAN tag restored; Py_None when none is queued. */
static PyObject *recv_one(int fd) {
    struct iovec iov = {frames_buf[0], FRAME_MAX};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control_buf[0];
    msg.msg_controllen = CONTROL_MAX;
    ssize_t got = recvmsg(fd, &msg, MSG_DONTWAIT);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    size_t len = (size_t)got > FRAME_MAX ? FRAME_MAX : (size_t)got;
    unsigned char tag[4];
    int tagged = vlan_of(&msg, tag);
    return vlan_frame(frames_buf[0], len, tagged, tag);
}

static PyObject *ring_recv(PyObject *self, PyObject *args) {
    (void)self;
    int fd, limit;
    Py_buffer ring;
    Py_ssize_t frame_size, head;
    if (!PyArg_ParseTuple(args, "iw*nni", &fd, &ring, &frame_size, &head, &limit)) return NULL;
    PyObject *out = NULL;
    if (frame_size < (Py_ssize_t)sizeof(struct tpacket2_hdr) || frame_size % 16 != 0 ||
        ring.len < frame_size || ring.len % frame_size != 0) {
        PyErr_Format(PyExc_ValueError, "frame size %zd does not divide a ring of %zd bytes",
                     frame_size, ring.len);
        goto done;
    }
    Py_ssize_t slots = ring.len / frame_size;
    if (head < 0 || head >= slots || limit < 1) {
        PyErr_Format(PyExc_ValueError, "head %zd, limit %d: give 0 <= head < %zd, limit >= 1",
                     head, limit, slots);
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL) goto done;
    Py_ssize_t truncated = 0;
    unsigned char *base = ring.buf;
    while (PyList_GET_SIZE(out) < limit) {
        unsigned char *slot = base + head * frame_size;
        struct tpacket2_hdr *hdr = (struct tpacket2_hdr *)slot;
        unsigned int status = __atomic_load_n(&hdr->tp_status, __ATOMIC_ACQUIRE);
        if (!(status & TP_STATUS_USER)) break;
        PyObject *frame = NULL;
        if (status & TP_STATUS_COPY) {
            frame = recv_one(fd);
            if (frame == Py_None) {
                Py_DECREF(frame);
                frame = NULL;
                truncated += 1;
            } else if (frame == NULL) {
                Py_CLEAR(out);
                goto done;
            }
        } else if (hdr->tp_snaplen < hdr->tp_len ||
                   (Py_ssize_t)hdr->tp_mac + (Py_ssize_t)hdr->tp_snaplen > frame_size) {
            truncated += 1;
        } else {
            unsigned char tag[4];
            int tagged = (status & TP_STATUS_VLAN_VALID) != 0;
            unsigned int tpid = (status & TP_STATUS_VLAN_TPID_VALID) ? hdr->tp_vlan_tpid : 0x8100;
            tag[0] = (unsigned char)(tpid >> 8);
            tag[1] = (unsigned char)tpid;
            tag[2] = (unsigned char)(hdr->tp_vlan_tci >> 8);
            tag[3] = (unsigned char)hdr->tp_vlan_tci;
            frame = vlan_frame(slot + hdr->tp_mac, hdr->tp_snaplen, tagged, tag);
            if (frame == NULL) {
                Py_CLEAR(out);
                goto done;
            }
        }
        __atomic_store_n(&hdr->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        head = (head + 1) % slots;
        if (frame != NULL) {
            int failed = PyList_Append(out, frame);
            Py_DECREF(frame);
            if (failed) {
                Py_CLEAR(out);
                goto done;
            }
        }
    }
    PyObject *result = Py_BuildValue("(Nnn)", out, head, truncated);
    out = result;
done:
    PyBuffer_Release(&ring);
    return out;
}

static PyObject *send_burst(PyObject *self, PyObject *args) {
    (void)self;
    int fd;
    PyObject *frames;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &PyList_Type, &frames)) return NULL;
    Py_ssize_t total = PyList_GET_SIZE(frames);
    for (Py_ssize_t i = 0; i < total; i++) {
        if (!PyBytes_Check(PyList_GET_ITEM(frames, i))) {
            PyErr_SetString(PyExc_TypeError, "send_burst takes a list of bytes");
            return NULL;
        }
    }
    Py_ssize_t sent = 0, refused = 0, next = 0;
    struct mmsghdr msgs[BURST];
    struct iovec iov[BURST];
    while (next < total) {
        int count = (int)(total - next < BURST ? total - next : BURST);
        memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)count);
        for (int i = 0; i < count; i++) {
            PyObject *frame = PyList_GET_ITEM(frames, next + i);
            iov[i].iov_base = PyBytes_AS_STRING(frame);
            iov[i].iov_len = (size_t)PyBytes_GET_SIZE(frame);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int done;
        int err = 0;
        Py_BEGIN_ALLOW_THREADS
        done = sendmmsg(fd, msgs, (unsigned int)count, 0);
        if (done < 0) err = errno;
        if (done < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS)) {
            struct pollfd p = {fd, POLLOUT, 0};
            poll(&p, 1, 100);
        }
        Py_END_ALLOW_THREADS
        if (done > 0) {
            sent += done;
            next += done;
        } else if (done < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS ||
                                err == EINTR)) {
            continue; /* the queue was full: waited above, try the same frame again */
        } else {
            refused += 1; /* this frame is refused (EMSGSIZE, a down link): skip it */
            next += 1;
        }
    }
    return Py_BuildValue("(nn)", sent, refused);
}

static PyMethodDef methods[] = {
    {"recv_burst", recv_burst, METH_VARARGS, "Up to `limit` frames, VLAN tags restored."},
    {"send_burst", send_burst, METH_VARARGS, "Send frames: (sent, refused)."},
    {"ring_recv", ring_recv, METH_VARARGS, "Frames from a receive ring: (frames, head, truncated)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pktio", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__pktio(void) { return PyModule_Create(&module); }
