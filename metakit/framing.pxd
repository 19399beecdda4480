# Cython's view of framing.py for the compiled build (setup.py): the framers
# become extension types whose attributes are C struct fields, so the
# compiled methods read them directly. framing.py stays the reference; the
# public attributes keep Python objects (any value framing.py accepts).

cdef class _Framer:
    cdef public object _buf
    cdef public object _error

cdef class Raw(_Framer):
    cdef public object max_length
    cdef public object read_size

cdef class Line(_Framer):
    cdef public Py_ssize_t _dlen
    cdef public Py_ssize_t _first
    cdef public object delimiter
    cdef public object max_length

cdef class LengthPrefixed(_Framer):
    cdef public Py_ssize_t _pending
    cdef public object _struct
    cdef public object byteorder
    cdef public object max_length
    cdef public object size

cdef class Fixed(_Framer):
    cdef public object length
    cdef public object max_length

cdef class JSON(_Framer):
    cdef public object inner
