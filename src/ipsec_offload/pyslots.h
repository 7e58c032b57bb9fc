/* The slots of Python objects, for the compiled fast paths of the agent (agent/_datapath.c,
 * agent/esp_open.h), the NIC (nic/_nicpath.c) and the host stack (host/_rxpath.c).
 *
 * The fast paths work directly on the Python objects their reference paths use, so that the
 * two paths read and write one state. An object's fields are its class's `__slots__`:
 * `slot_offset` reads where a slot lies from the class's member descriptor once, and a slot is
 * then read and written as CPython's own descriptor does (a PyObject * at that offset in the
 * object, NULL when the slot is empty). `new_record` makes an instance of a (frozen) dataclass
 * with slots as its __init__ would leave it. Nothing here knows any of the package's classes:
 * the header sits at the package's root, below every layer, as burst.py does for Python.
 */
#ifndef IPSEC_OFFLOAD_PYSLOTS_H
#define IPSEC_OFFLOAD_PYSLOTS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

/* Where the slot `name` of `type`'s objects lies: 0, or -1 with an error set (TypeError when
 * `name` is an attribute of `type` but not a `__slots__` entry of `type` or of a base class of
 * it; the lookup's own error, such as AttributeError, when it is not an attribute at all).
 *
 * The descriptor must be one of `type`'s own layout: a member descriptor of another class
 * (`class C: frame = Other.__dict__["frame"]`) names an offset in the other class's objects,
 * which may lie past the end of `type`'s, and reading or writing there would corrupt memory. */
static inline int slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset) {
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    PyMemberDef *member;
    if (descr == NULL)
        return -1;
    member = Py_TYPE(descr) == &PyMemberDescr_Type ? ((PyMemberDescrObject *)descr)->d_member
                                                   : NULL;
    if (member == NULL || member->type != T_OBJECT_EX || (member->flags & READONLY) ||
        !PyType_IsSubtype(type, PyDescr_TYPE(descr)) ||
        member->offset < (Py_ssize_t)sizeof(PyObject) ||
        member->offset + (Py_ssize_t)sizeof(PyObject *) > type->tp_basicsize) {
        PyErr_Format(PyExc_TypeError, "%s.%s must be a __slots__ entry of %s or of a base class",
                     type->tp_name, name, type->tp_name);
        Py_DECREF(descr);
        return -1;
    }
    *offset = member->offset;
    Py_DECREF(descr);
    return 0;
}

/* The offsets of `n` named slots of `type`: 0, or -1 with an error set (as slot_offset). */
static inline int slot_offsets(PyTypeObject *type, const char *const *names, int n,
                               Py_ssize_t *offsets) {
    for (int i = 0; i < n; i++)
        if (slot_offset(type, names[i], &offsets[i]))
            return -1;
    return 0;
}

/* A slot of `obj`: a borrowed reference, NULL when the slot is empty. */
static inline PyObject *slot_get(PyObject *obj, Py_ssize_t offset) {
    return *(PyObject **)((char *)obj + offset);
}

/* An unsigned 64-bit slot; -1 (error cleared) when it is not one. */
static inline int slot_u64(PyObject *obj, Py_ssize_t offset, uint64_t *out) {
    PyObject *value = slot_get(obj, offset);
    if (value == NULL || !PyLong_CheckExact(value))
        return -1;
    *out = PyLong_AsUnsignedLongLong(value);
    if (*out == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

/* Set a slot to a new reference (stolen); -1 when `value` is NULL (an error is set). */
static inline int slot_set(PyObject *obj, Py_ssize_t offset, PyObject *value) {
    if (value == NULL)
        return -1;
    Py_XSETREF(*(PyObject **)((char *)obj + offset), value);
    return 0;
}

static inline int slot_set_u64(PyObject *obj, Py_ssize_t offset, uint64_t v) {
    return slot_set(obj, offset, PyLong_FromUnsignedLongLong(v));
}

/* A new frozen dataclass instance of `type` with `values` (stolen, all non-NULL) in the slots
 * at `offsets`, as its __init__ would leave it; NULL (and every value released) on error. */
static inline PyObject *new_record(PyTypeObject *type, const Py_ssize_t *offsets,
                                   PyObject **values, int n) {
    PyObject *record = NULL;
    int complete = 1;
    for (int i = 0; i < n; i++)
        complete &= values[i] != NULL;
    if (complete)
        record = type->tp_alloc(type, 0);
    for (int i = 0; i < n; i++) {
        if (record != NULL)
            *(PyObject **)((char *)record + offsets[i]) = values[i];
        else
            Py_XDECREF(values[i]);
    }
    return record;
}

#endif
