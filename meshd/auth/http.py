"""Authenticating an aiohttp request (the HTTP data port, and the gateways' own schemes on top).

A request is its ``Authorization: Bearer <token>``'s principal; without one, the
connection's: the node's owner for a local connection of its user
(:mod:`meshd.auth.peer`, looked up once per connection), anonymous otherwise.
A token that is not valid is refused even on a local connection (a client that
sends one means to be that principal).
"""

from __future__ import annotations

import weakref
from typing import Any

from aiohttp import web

from meshd import auth
from meshd.errors import PermissionDenied
from meshd.limits import log_rejected
from meshd.tls import peer_identity

_by_connection: weakref.WeakKeyDictionary[Any, auth.Principal] = weakref.WeakKeyDictionary()


def connection_principal(request: web.Request, access: auth.Access) -> auth.Principal:
    """The principal of the connection: its verified client certificate's (mutual TLS),
    else OPERATOR for a local connection of the node's user (or root), else ANONYMOUS."""
    transport = request.transport
    if transport is None:
        return auth.ANONYMOUS
    try:
        return _by_connection[transport]
    except (KeyError, TypeError):
        pass
    p = access.by_certificate(peer_identity(transport))
    if p is None:
        p = access.local(transport.get_extra_info("peername"), transport.get_extra_info("sockname"))
    try:
        _by_connection[transport] = p
    except TypeError:
        pass
    return p


def bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def principal(request: web.Request, access: auth.Access, token: str | None = None) -> auth.Principal:
    """The request's principal (``token``: one the protocol carries elsewhere, e.g.
    WebHDFS's ``delegation``). PermissionDenied for a token that is not valid."""
    token = token or bearer(request)
    if token:
        p = access.by_token(token)
        if p is None:
            log_rejected(f"{request.method} {request.path[:200]}", request.remote or "", "invalid token")
            raise PermissionDenied("the token presented is not valid for this node")
        return p
    return connection_principal(request, access)
