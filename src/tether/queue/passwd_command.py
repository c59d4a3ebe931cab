"""`tether qm passwd`: the password hash for a `[users.NAME]` table of the service's
configuration.

    $ tether qm passwd                  # asks twice, without echo, on a terminal
    $ printf '%s\\n' "$PW" | tether qm passwd
    scrypt$16384$8$1$...$...

Reads the password from stdin (one line; without echo when stdin is a terminal), prints
`password_hash = "..."`'s value on stdout: scrypt with a random salt (auth.py).
"""
from __future__ import annotations

import argparse
import getpass
import sys

from .auth import MAX_PASSWORD, hash_password


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `tether qm passwd` (none: the password comes on stdin)."""
    parser.description = "Print the scrypt hash of a password read on stdin, for password_hash in [users.NAME]."


def read_password() -> str:
    """The password: asked twice without echo on a terminal, else one line of stdin.
    ValueError when it is empty, too long, not one line, or the two differ."""
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Again: "):
                raise ValueError("the two passwords differ")
        except EOFError:
            raise ValueError("no password given") from None
    else:
        text = sys.stdin.read(MAX_PASSWORD + 3)
        password = text[:-1] if text.endswith("\n") else text
        password = password[:-1] if password.endswith("\r") else password
        if "\n" in password:
            raise ValueError("the password on stdin must be one line")
    if not password:
        raise ValueError("the password is empty")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"the password is longer than {MAX_PASSWORD} characters")
    return password


def main(args: argparse.Namespace) -> int:
    """`tether qm passwd`: prints the hash; exit status 0."""
    print(hash_password(read_password()))
    return 0
