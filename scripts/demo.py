#!/usr/bin/env python3
"""What applications see through tenantwall: run by scripts/demo, or by hand against a proxy running
policies/demo.toml:

    .venv/bin/python scripts/demo.py 127.0.0.1:27018 [mongodb://BACKEND/]

Two tenants (acme, globex) write to the same shared collection through the proxy; each reads back only its own
documents; a cross-tenant attempt is refused with its reason. With the backend URI, it also shows what the
backend holds: every document stamped with its writer's tenant. Exits non-zero if any of that does not hold.
"""

from __future__ import annotations

import sys
from pprint import pformat

from pymongo import MongoClient
from pymongo.errors import OperationFailure
from pymongo.server_type import SERVER_TYPE

HIDDEN_FIELDS = ("hosts", "passives", "arbiters", "setName", "primary", "me", "topologyVersion")
USERS = {"acme": ("acme-app", "acme-demo-password"), "globex": ("globex-app", "globex-demo-password")}


def section(title: str) -> None:
    print(f"\n--- {title} ---")


def connect(addr: str, tenant: str) -> MongoClient:
    user, password = USERS[tenant]
    return MongoClient(f"mongodb://{user}:{password}@{addr}/app?authSource=admin",
                       serverSelectionTimeoutMS=5000, appname=f"demo-{tenant}")


def main(addr: str, backend_uri: str | None) -> int:
    problems: list[str] = []
    acme, globex = connect(addr, "acme"), connect(addr, "globex")

    section(f"hello, as seen through {addr}")
    hello = acme.admin.command("hello")
    print(pformat({k: hello[k] for k in ("msg", "maxWireVersion", "isWritablePrimary") if k in hello}))
    if hello.get("msg") != "isdbgrid":
        problems.append(f"hello.msg is {hello.get('msg')!r}, expected 'isdbgrid' (a mongos)")
    leaked = [f for f in HIDDEN_FIELDS if f in hello]
    if leaked:
        problems.append(f"hello reveals backend topology: {leaked}")
    (server,) = acme.topology_description.server_descriptions().values()
    print(f"pymongo sees a {server.server_type_name} at {server.address[0]}:{server.address[1]}: the proxy, never the backend")
    if server.server_type != SERVER_TYPE.Mongos:
        problems.append(f"pymongo sees a {server.server_type_name}, expected Mongos")

    section("two tenants write to the same collection, app.orders")
    acme.app.orders.insert_many([{"order": f"A-{i}", "total": 10 * i} for i in range(1, 4)])
    globex.app.orders.insert_many([{"order": f"G-{i}", "total": 7 * i} for i in range(1, 3)])
    print("acme inserted A-1, A-2, A-3; globex inserted G-1, G-2 (neither sets tenantId: the proxy stamps it)")

    section("each reads back only its own")
    for name, client, prefix, count in (("acme", acme, "A-", 3), ("globex", globex, "G-", 2)):
        orders = [d["order"] for d in client.app.orders.find({}, {"_id": 0}).sort("order", 1)]
        total = next(client.app.orders.aggregate([{"$group": {"_id": None, "sum": {"$sum": "$total"}}}]), {}).get("sum")
        print(f"{name:7} find -> {orders}, count -> {client.app.orders.count_documents({})}, sum(total) -> {total}")
        if len(orders) != count or not all(o.startswith(prefix) for o in orders):
            problems.append(f"{name} saw {orders}")
    sneaky = list(acme.app.orders.find({"$or": [{"tenantId": "globex"}, {"tenantId": {"$ne": "acme"}}]}))
    print(f"acme asking for globex's rows with $or/$ne -> {len(sneaky)} documents")
    if sneaky:
        problems.append("acme read globex's documents")

    section("a cross-tenant attempt is refused, with its reason")
    try:
        acme.app.orders.update_many({}, {"$set": {"tenantId": "globex"}})
        problems.append("acme re-labelled its documents as globex's")
    except OperationFailure as e:
        print(f"acme: update_many({{}}, {{'$set': {{'tenantId': 'globex'}}}})\n  -> refused: code {e.code} "
              f"({e.details.get('codeName')}): {e.details.get('errmsg')}")
    try:
        acme.app.payroll.find_one()
        problems.append("acme read a collection no rule allows")
    except OperationFailure as e:
        print(f"acme: app.payroll.find_one()\n  -> refused: code {e.code} ({e.details.get('codeName')}): {e.details.get('errmsg')}")

    if backend_uri:
        section("what the backend holds (read directly, not through the proxy)")
        for doc in MongoClient(backend_uri).app.orders.find({}, {"_id": 0}).sort("order", 1):
            print(f"  {doc}")
            if doc.get("tenantId") != ("acme" if doc["order"].startswith("A-") else "globex"):
                problems.append(f"document not stamped with its writer's tenant: {doc}")

    section("result")
    if problems:
        for p in problems:
            print(f"PROBLEM: {p}")
        return 1
    print("ok: two tenants shared one collection and neither could see or touch the other's data")
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print(f"usage: {sys.argv[0]} HOST:PORT [mongodb://BACKEND/]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None))
