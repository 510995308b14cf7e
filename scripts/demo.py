#!/usr/bin/env python3
"""What an application sees through tenantwall: run by scripts/demo, or by hand against any
running proxy:

    .venv/bin/python scripts/demo.py mongodb://127.0.0.1:27018/

Exits non-zero if the proxy does not behave as promised (presents itself as a mongos without
revealing the backend, and relays reads and writes faithfully).
"""

from __future__ import annotations

import sys
from pprint import pformat

from pymongo import MongoClient
from pymongo.server_type import SERVER_TYPE

HIDDEN_FIELDS = ("hosts", "passives", "arbiters", "setName", "primary", "me", "topologyVersion")


def section(title: str) -> None:
    print(f"\n--- {title} ---")


def main(uri: str) -> int:
    problems: list[str] = []
    with MongoClient(uri, serverSelectionTimeoutMS=5000, appname="tenantwall-demo") as client:
        section(f"hello, as seen through {uri}")
        hello = client.admin.command("hello")
        print(pformat(hello, sort_dicts=False))
        if hello.get("msg") != "isdbgrid":
            problems.append(f"hello.msg is {hello.get('msg')!r}, expected 'isdbgrid' (a mongos)")
        leaked = [f for f in HIDDEN_FIELDS if f in hello]
        if leaked:
            problems.append(f"hello reveals backend topology: {leaked}")
        (server,) = client.topology_description.server_descriptions().values()
        print(f"pymongo sees: {server.server_type_name} at {server.address[0]}:{server.address[1]}"
              " (the proxy; the backend address is never shown)")
        if server.server_type != SERVER_TYPE.Mongos:
            problems.append(f"pymongo sees a {server.server_type_name}, expected Mongos")

        section("write and read back through the proxy")
        orders = client.demo.orders
        orders.drop()
        docs = [
            {"_id": "order-1", "customer": "alice", "items": ["tea"], "total": 4.5},
            {"_id": "order-2", "customer": "bob", "items": ["coffee", "cake"], "total": 9.0},
            {"_id": "order-3", "customer": "alice", "items": ["cake"], "total": 5.25},
        ]
        result = orders.insert_many(docs)
        print(f"inserted {result.inserted_ids}")
        back = list(orders.find().sort("_id", 1))
        for doc in back:
            print(f"  {doc}")
        if back != docs:
            problems.append("documents read back differ from those written")
        alice = orders.count_documents({"customer": "alice"})
        print(f"orders for alice: {alice}")
        if alice != 2:
            problems.append(f"count_documents(alice) = {alice}, expected 2")
        orders.update_one({"_id": "order-2"}, {"$set": {"status": "paid"}})
        print(f"after update: {orders.find_one({'_id': 'order-2'})}")

        section("tenant isolation")
        # The policy engine is later work. Once policies/demo.toml names tenants, this is where the
        # demo connects as two of them (e.g. mongodb://acme:...@proxy/ and mongodb://globex:...@proxy/),
        # writes as each, and shows that neither can read, count, aggregate over or guess the
        # other's documents, and that a denied command names the policy rule.
        print("not enforced yet: every command is relayed unchanged to the single backend")

    section("result")
    if problems:
        for p in problems:
            print(f"PROBLEM: {p}")
        return 1
    print("ok: the application only ever saw the proxy, and its data went through intact")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} mongodb://HOST:PORT/", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
