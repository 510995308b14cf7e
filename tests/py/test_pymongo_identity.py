"""Tenant identity with pymongo: SCRAM-SHA-256 terminated at the proxy (pymongo authenticates speculatively inside
its first hello, which it sends as OP_QUERY), and two tenants on two backends."""

from __future__ import annotations

import subprocess

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from conftest import Backend, Proxy, proxy_executable


def verifier(password: str) -> str:
    out = subprocess.run([str(proxy_executable()), "passwd", "--iterations", "4096"], input=password + "\n",
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def two_backends(tmp_path_factory):
    one = Backend(tmp_path_factory.mktemp("nx1")).start()
    two = Backend(tmp_path_factory.mktemp("nx2")).start()
    try:
        yield one, two
    finally:
        one.stop()
        two.stop()


@pytest.fixture(scope="module")
def identity_proxy(two_backends, tmp_path_factory):
    one, two = two_backends
    policy = f"""
[[listeners]]
address = "127.0.0.1:0"

[[backends]]
name = "one"
uri = "{one.uri}"

[[backends]]
name = "two"
uri = "{two.uri}"

[[tenants]]
id = "acme"
backend = "one"
users = [{{ name = "acme-app", scram = "{verifier('acme-pw')}" }}]

[[tenants]]
id = "globex"
backend = "two"
users = [{{ name = "globex-app", scram = "{verifier('globex-pw')}" }}]

[[rules]]
database = "*"
mode = "database"
template = "{{db}}"
"""
    p = Proxy(tmp_path_factory.mktemp("tw-identity"), one, policy_text=policy)
    try:
        yield p.start()
    finally:
        p.stop()


def client(port: int, user: str | None = None, password: str | None = None) -> MongoClient:
    kwargs = {"serverSelectionTimeoutMS": 5000}
    if user is not None:
        kwargs.update(username=user, password=password, authSource="admin", authMechanism="SCRAM-SHA-256")
    return MongoClient("127.0.0.1", port, **kwargs)


def test_each_tenant_writes_only_to_its_backend(identity_proxy, two_backends):
    one, two = two_backends
    acme = client(identity_proxy.port, "acme-app", "acme-pw")
    globex = client(identity_proxy.port, "globex-app", "globex-pw")
    acme.app.orders.insert_many([{"who": "acme", "i": i} for i in range(5)])
    globex.app.orders.insert_many([{"who": "globex", "i": i} for i in range(3)])
    assert sorted(d["who"] for d in acme.app.orders.find()) == ["acme"] * 5
    assert sorted(d["who"] for d in globex.app.orders.find()) == ["globex"] * 3
    direct_one, direct_two = MongoClient(one.uri), MongoClient(two.uri)
    assert {d["who"] for d in direct_one.app.orders.find()} == {"acme"}
    assert {d["who"] for d in direct_two.app.orders.find()} == {"globex"}


def test_wrong_password_and_unknown_user_fail_alike(identity_proxy):
    errors = []
    for user, password in [("acme-app", "wrong"), ("nobody", "acme-pw")]:
        with pytest.raises(OperationFailure) as info:
            client(identity_proxy.port, user, password).app.command("ping")
        errors.append((info.value.code, str(info.value).replace(user, "USER")))
    assert errors[0][0] == 18
    assert errors[0] == errors[1]


def test_no_credentials_get_unauthorized(identity_proxy):
    anonymous = client(identity_proxy.port)
    assert anonymous.admin.command("ping")["ok"] == 1
    with pytest.raises(OperationFailure) as info:
        anonymous.app.orders.insert_one({"who": "anonymous"})
    assert info.value.code == 13
