# Argument conversion shared by the ext modules: inline C functions only, so cimporting
# this file adds no run-time module. Errors name the argument, as the twins' do.

from cpython.number cimport PyNumber_Index
from libc.stdint cimport uint64_t


cdef inline Py_ssize_t _int(object value, str name) except? -1:
    """`value` as a Py_ssize_t (an int or __index__), TypeError naming `name` otherwise.
    Values outside -1..2**62 come back as -2, which every caller refuses by its own range."""
    cdef Py_ssize_t n
    if type(value) is not int:
        try:
            value = PyNumber_Index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    try:
        n = value
    except OverflowError:
        return -2
    if n < -1 or n > (<Py_ssize_t>1) << 62:
        return -2
    return n


cdef inline uint64_t _number(object value, str name) except? 0xFFFFFFFFFFFFFFFF:
    """`value` as an int in 0..2**64-1, or TypeError/ValueError naming `name`."""
    if type(value) is not int:
        try:
            value = PyNumber_Index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    try:
        return value
    except OverflowError:
        raise ValueError(f"{name} must be in 0..2**64-1, got {value}") from None
