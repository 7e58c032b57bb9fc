/* Batched frame I/O for live mode (packet_socket.py is the reference: the same frames, in the
 * same order, with the same VLAN tags put back).
 *
 * recv_burst(fd, limit) -> list[bytes]: up to `limit` (1..64) datagrams with one recvmmsg,
 *     never waiting; a VLAN tag the kernel moved into PACKET_AUXDATA is put back after the
 *     MAC addresses (TPID 0x8100 unless the kernel gives one).
 * send_burst(fd, frames) -> (sent, refused): sendmmsg in runs of 64; a full queue is waited
 *     out (poll), a frame the socket refuses (too long, say) is counted and skipped.
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
        PyObject *frame;
        if (len >= 12 && vlan_of(&msgs[i].msg_hdr, tag)) {
            frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len + 4);
            if (frame != NULL) {
                char *to = PyBytes_AS_STRING(frame);
                memcpy(to, frames_buf[i], 12);
                memcpy(to + 12, tag, 4);
                memcpy(to + 16, frames_buf[i] + 12, len - 12);
            }
        } else {
            frame = PyBytes_FromStringAndSize((const char *)frames_buf[i], (Py_ssize_t)len);
        }
        if (frame == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, frame);
    }
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pktio", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__pktio(void) { return PyModule_Create(&module); }
