"""Every public name of the session and streams API says what it does and is typed."""
from __future__ import annotations

import inspect

import pytest

from tether.session.api import Server, connect, serve
from tether.session.session import Session
from tether.streams.api import create_connection, create_server, open_connection, start_server
from tether.streams.server import StreamServer
from tether.streams.transport import SessionTransport

CLASSES = [Session, Server, connect, StreamServer, SessionTransport]
FUNCTIONS = [serve, create_connection, create_server, open_connection, start_server]


def public_members(cls):
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            yield f"{cls.__name__}.{name}", member.fget, member.fget.__doc__
        elif inspect.isfunction(member):
            # an override of a documented asyncio method inherits its docstring
            yield f"{cls.__name__}.{name}", member, inspect.getdoc(getattr(cls, name))


MEMBERS = [m for cls in CLASSES for m in public_members(cls)] + \
          [(f.__name__, f, f.__doc__) for f in FUNCTIONS]


@pytest.mark.parametrize("name,func,doc", MEMBERS, ids=[m[0] for m in MEMBERS])
def test_public_member_has_a_docstring_and_type_hints(name, func, doc):
    assert doc and doc.strip(), f"{name} has no docstring"
    annotations = func.__annotations__
    assert "return" in annotations, f"{name} has no return type"
    params = [p for p in inspect.signature(func).parameters.values()
              if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in params if p.name not in annotations]
    assert not missing, f"{name}: parameters without a type: {missing}"
