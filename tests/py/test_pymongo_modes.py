"""Collection- and database-mode isolation with pymongo: identical names, separate data, separate catalogs."""

from __future__ import annotations

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from conftest import Backend, Proxy
from test_pymongo_identity import client, verifier

TENANTS = ("acme", "globex")


@pytest.fixture(scope="module")
def modes_backend(tmp_path_factory):
    b = Backend(tmp_path_factory.mktemp("nx-modes")).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def modes_proxy(modes_backend, tmp_path_factory):
    tenants = "".join(
        f'[[tenants]]\nid = "{t}"\nbackend = "shared"\nusers = [{{ name = "{t}-app", scram = "{verifier(t + "-pw")}" }}]\n\n'
        for t in TENANTS)
    policy = f"""
[[listeners]]
address = "127.0.0.1:0"

[[backends]]
name = "shared"
uri = "{modes_backend.uri}"

{tenants}
[[rules]]
database = "crm"
mode = "collection"

[[rules]]
database = "app"
mode = "database"
"""
    p = Proxy(tmp_path_factory.mktemp("tw-modes"), modes_backend, policy_text=policy)
    try:
        yield p.start()
    finally:
        p.stop()


def test_identical_names_separate_data_and_catalogs(modes_proxy, modes_backend):
    clients = {t: client(modes_proxy.port, f"{t}-app", f"{t}-pw") for t in TENANTS}
    for t, c in clients.items():
        c.crm.contacts.insert_many([{"who": t, "i": i} for i in range(15)])
        c.app.notes.insert_one({"who": t})
    for t, c in clients.items():
        assert {d["who"] for d in c.crm.contacts.find(batch_size=4)} == {t}
        assert c.crm.contacts.count_documents({}) == 15
        assert [d["who"] for d in c.app.notes.find()] == [t]
        assert c.crm.list_collection_names() == ["contacts"]
        assert c.app.list_collection_names() == ["notes"]
        assert sorted(c.list_database_names()) == ["app", "crm"]
        cursor = c.crm.command("find", "contacts", batchSize=3)["cursor"]
        assert cursor["ns"] == "crm.contacts"
        more = c.crm.command("getMore", cursor["id"], collection="contacts", batchSize=3)["cursor"]
        assert more["ns"] == "crm.contacts"
    direct = MongoClient(modes_backend.uri)
    assert sorted(direct.crm.list_collection_names()) == ["acme__contacts", "globex__contacts"]
    assert {"acme_app", "globex_app"} <= set(direct.list_database_names())


def test_other_tenants_real_names_are_unreachable(modes_proxy):
    acme = client(modes_proxy.port, "acme-app", "acme-pw")
    with pytest.raises(OperationFailure) as info:
        acme.globex_app.notes.find_one()
    assert info.value.code == 13
    assert acme.crm["globex__contacts"].count_documents({}) == 0
