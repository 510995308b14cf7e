"""Field-level isolation with pymongo: two tenants share app.orders on one backend through the proxy."""

from __future__ import annotations

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from conftest import Backend, Proxy
from test_pymongo_identity import client, verifier


@pytest.fixture(scope="module")
def shared_backend(tmp_path_factory):
    b = Backend(tmp_path_factory.mktemp("nx-shared")).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def field_proxy(shared_backend, tmp_path_factory):
    policy = f"""
[[listeners]]
address = "127.0.0.1:0"

[[backends]]
name = "shared"
uri = "{shared_backend.uri}"

[[tenants]]
id = "acme"
backend = "shared"
users = [{{ name = "acme-app", scram = "{verifier('acme-pw')}" }}]

[[tenants]]
id = "globex"
backend = "shared"
users = [{{ name = "globex-app", scram = "{verifier('globex-pw')}" }}]

[[rules]]
database = "app"
collection = "orders"
mode = "field"

[[rules]]
database = "app"
collection = "countries"
mode = "shared"
"""
    MongoClient(shared_backend.uri).app.countries.insert_many([{"code": "FR"}, {"code": "DE"}])
    p = Proxy(tmp_path_factory.mktemp("tw-field"), shared_backend, policy_text=policy)
    try:
        yield p.start()
    finally:
        p.stop()


def test_reads_and_writes_stay_within_the_tenant(field_proxy, shared_backend):
    acme = client(field_proxy.port, "acme-app", "acme-pw").app.orders
    globex = client(field_proxy.port, "globex-app", "globex-pw").app.orders
    acme.insert_many([{"who": "acme", "n": i, "country": "FR"} for i in range(12)])
    globex.insert_many([{"who": "globex", "n": i, "country": "DE"} for i in range(7)])

    assert {d["who"] for d in acme.find(batch_size=5)} == {"acme"}
    assert acme.count_documents({}) == 12
    assert globex.count_documents({}) == 7
    assert globex.estimated_document_count() == 7
    assert globex.distinct("who") == ["globex"]
    joined = list(acme.aggregate([{"$match": {"n": {"$lt": 2}}},
                                  {"$lookup": {"from": "countries", "localField": "country", "foreignField": "code",
                                               "as": "c"}}]))
    assert len(joined) == 2
    assert list(acme.find({"who": "globex"})) == []
    assert list(acme.find({"tenantId": {"$ne": "acme"}})) == []

    assert acme.update_many({}, {"$set": {"seen": True}}).matched_count == 12
    assert globex.count_documents({"seen": True}) == 0
    assert globex.delete_many({}).deleted_count == 7
    assert acme.count_documents({}) == 12
    assert acme.find_one_and_update({"n": 0}, {"$set": {"first": True}})["who"] == "acme"

    assert acme.database.client.list_database_names() == ["app"]
    stored = list(MongoClient(shared_backend.uri).app.orders.find())
    assert len(stored) == 12
    assert all(d["tenantId"] == d["who"] for d in stored)


@pytest.mark.parametrize("attack", [
    lambda c: c.app.orders.insert_one({"tenantId": "globex"}),
    lambda c: c.app.orders.update_many({}, {"$set": {"tenantId": "globex"}}),
    lambda c: c.app.orders.update_many({}, {"$rename": {"tenantId": "was"}}),
    lambda c: c.app.orders.replace_one({}, {"tenantId": "globex"}),
    lambda c: list(c.app.orders.find({"$where": "true"})),
    lambda c: list(c.app.orders.aggregate([{"$out": "stolen"}])),
    lambda c: list(c.app.orders.aggregate([{"$collStats": {}}])),
    lambda c: c.app.orders.drop(),
    lambda c: c.app.countries.insert_one({"code": "XX"}),
    lambda c: c.app.secrets.find_one(),
    lambda c: c.config.system.sessions.find_one(),
    lambda c: c.admin.command("serverStatus"),
])
def test_attacks_are_refused(field_proxy, attack):
    acme = client(field_proxy.port, "acme-app", "acme-pw")
    with pytest.raises(OperationFailure) as info:
        attack(acme)
    assert info.value.code in (13, 115), info.value.details


def test_transactions_are_scoped_like_everything_else(field_proxy, shared_backend):
    acme = client(field_proxy.port, "acme-app", "acme-pw")
    globex = client(field_proxy.port, "globex-app", "globex-pw")
    with acme.start_session() as session:
        with session.start_transaction():
            acme.app.orders.insert_one({"who": "acme", "tx": True}, session=session)
            seen = list(acme.app.orders.find({"tx": True}, session=session))
            assert [d["who"] for d in seen] == ["acme"]
    assert acme.app.orders.count_documents({"tx": True}) == 1
    assert globex.app.orders.count_documents({"tx": True}) == 0
    stored = MongoClient(shared_backend.uri).app.orders.find_one({"tx": True})
    assert stored["tenantId"] == "acme"


def test_a_collation_is_allowed_when_no_collation_can_confuse_tenant_values(field_proxy):
    # "acme" and "globex" stay apart under every collation, so Payload's and mongoose's collations work.
    acme = client(field_proxy.port, "acme-app", "acme-pw")
    found = list(acme.app.orders.find({}, collation={"locale": "en", "strength": 2}))
    assert all(d["tenantId"] == "acme" for d in found)
