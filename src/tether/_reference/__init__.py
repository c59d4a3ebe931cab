"""Pure-Python twins of tether._native, same API, written for clarity. Tests drive both
and compare every result; nothing in the library imports these at run time."""
