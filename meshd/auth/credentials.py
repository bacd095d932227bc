"""Credentials on disk: the node's own (made on first start), and how clients find one.

``DATA_DIR/credentials.json`` (0600, in the 0700 data directory)::

    {"token": "...",                       # an operator token for meshctl, meshfs, mesh://
     "s3_access_key": "...", "s3_secret_key": "..."}   # an operator S3 key pair

It is made the first time a node starts on a data directory and kept across
restarts. In a cluster every node holds the same one, derived from the cluster
token (:func:`derived`): a client may present it to any member. Its owner (who runs meshd) needs neither: local connections of that
user are recognised (:mod:`meshd.auth.peer`). Another user, another machine or
another network namespace presents the token (``Authorization: Bearer``, gRPC
metadata ``authorization``, the metadata wire's ``auth``, WebHDFS
``delegation=``) or signs with the S3 key.

Clients look for a token in this order: the ``token=`` argument (``meshctl
--token``), ``$MESH_TOKEN``, the file ``$MESH_TOKEN_FILE`` (the token alone or a
credentials.json), then ``credentials.json`` beside the ``endpoints.json`` they
were pointed at (``--endpoint DATA_DIR``), or in the default data directory when
pointed at no node (a bare ``host:port`` is sent no token it did not ask for).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from typing import Any

from meshd.errors import InvalidArgument

FILE = "credentials.json"


def new_token() -> str:
    return "mesh_" + secrets.token_urlsafe(32)


def derived(cluster_token: str) -> dict[str, str]:
    """A cluster's operator credentials, the same on every node: derived from the cluster
    token (HMAC-SHA256, one way: an operator token does not reveal the cluster token)."""
    def part(label: str) -> bytes:
        return hmac.new(cluster_token.encode(), b"mesh operator " + label.encode(), hashlib.sha256).digest()

    return {"token": "mesh_" + base64.urlsafe_b64encode(part("token")).decode().rstrip("="),
            "s3_access_key": "MESH" + part("s3 key").hex()[:16].upper(),
            "s3_secret_key": base64.urlsafe_b64encode(part("s3 secret")).decode().rstrip("=")}


def ensure(data_dir: str, preset: dict[str, str] | None = None) -> dict[str, str]:
    """The node's credentials, made (0600) on first start; ``preset``: the cluster's
    (:func:`derived`), written if the file does not hold them already."""
    path = os.path.join(data_dir, FILE)
    try:
        with open(path) as f:
            d = json.load(f)
        if isinstance(d, dict) and all(isinstance(d.get(k), str) and d.get(k)
                                       for k in ("token", "s3_access_key", "s3_secret_key")) \
                and (preset is None or d == preset):
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
            return {k: str(v) for k, v in d.items()}
    except (FileNotFoundError, ValueError):
        pass
    d = preset or {"token": new_token(), "s3_access_key": "MESH" + secrets.token_hex(8).upper(),
                   "s3_secret_key": secrets.token_urlsafe(30)}
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(d, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return d


def read_token_file(path: str) -> str:
    """A token file: the token alone, or a credentials.json."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as e:
        raise InvalidArgument(f"cannot read token file {path}: {e.strerror}") from None
    if text.startswith("{"):
        try:
            d: Any = json.loads(text)
            return str(d["token"])
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument(f"token file {path} is JSON without a \"token\"") from None
    if not text:
        raise InvalidArgument(f"token file {path} is empty")
    return text


def _beside(candidate: str) -> str | None:
    if not candidate:
        return None
    if candidate.endswith(".json"):
        candidate = os.path.dirname(candidate)
    path = os.path.join(candidate, FILE)
    try:
        return read_token_file(path)
    except InvalidArgument:
        return None


def find_token(endpoint: str | None = None, token: str | None = None) -> str | None:
    """The token a client presents, or None (then only the node's owner gets in)."""
    if token:
        return token
    if os.environ.get("MESH_TOKEN"):
        return os.environ["MESH_TOKEN"]
    if os.environ.get("MESH_TOKEN_FILE"):
        return read_token_file(os.environ["MESH_TOKEN_FILE"])
    candidate = endpoint or os.environ.get("MESH_ENDPOINT")
    if candidate:
        # A data directory or endpoints.json: its credentials. A bare host:port gets none
        # of ours (a token is never sent to a node it was not made for).
        return _beside(candidate) if "/" in candidate and "://" not in candidate else None
    from meshd.config import default_data_dir

    return _beside(default_data_dir())


def read_cluster_token(path: str) -> str:
    token = read_token_file(path)
    if len(token) < 16:
        raise InvalidArgument(f"cluster token in {path} is too short (16 characters at least)")
    return token
