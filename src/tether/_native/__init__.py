"""Compiled hot paths (built from ext/*.pyx). Each module has a pure-Python twin in
tether._reference with the same API; tether.layer1 decides which of the two runs
(tether.NATIVE says which)."""
