"""Compiled hot paths (built from ext/*.pyx). Each module has a pure-Python twin in
tether._reference with the same API; users always get these."""
