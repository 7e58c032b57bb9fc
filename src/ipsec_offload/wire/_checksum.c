/* The Internet checksum in C: `internet_checksum(data)` of `ip.py`, for any buffer. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "wire/checksum.h"

static PyObject *internet_checksum(PyObject *module, PyObject *data) {
    Py_buffer view;
    (void)module;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    unsigned value = csum_finish(csum_add(0, view.buf, (size_t)view.len));
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(value);
}

static PyMethodDef checksum_methods[] = {
    {"internet_checksum", internet_checksum, METH_O,
     "RFC 1071 checksum of a bytes-like object (an odd length padded with one zero byte)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef checksum_module = {
    PyModuleDef_HEAD_INIT, .m_name = "_checksum", .m_doc = "The Internet checksum in C.",
    .m_size = -1, .m_methods = checksum_methods,
};

PyMODINIT_FUNC PyInit__checksum(void) { return PyModule_Create(&checksum_module); }
