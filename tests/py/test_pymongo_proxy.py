"""pymongo through tenantwall against a real MongoDB-compatible backend (nx-27017).

Each test states what a driver must observe through the proxy; expected values are computed from
the data the test wrote (or from the backend itself), never copied from a previous run.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import struct
import threading
import time

import bson
import pytest
from pymongo import ReturnDocument, monitoring
from pymongo.errors import DuplicateKeyError
from pymongo.server_type import SERVER_TYPE
from pymongo.topology_description import TOPOLOGY_TYPE
from pymongo.write_concern import WriteConcern

from conftest import DIRECT, mongo_client

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013
CHECKSUM_PRESENT = 1 << 0
MORE_TO_COME = 1 << 1

# What a proxy in front of a cluster must never show a driver: with any of these a driver could
# discover the backend and connect around the proxy.
BACKEND_TOPOLOGY_FIELDS = ("hosts", "passives", "arbiters", "setName", "setVersion", "primary", "me",
                           "topologyVersion", "electionId")
COMPRESSOR_FIELD = re.compile(r'compressor="?(zstd|snappy|zlib)\b')


def key(i: int) -> str:
    """A sortable string `_id`. nx-27017 compares integer `_id`s as strings in sorts and range
    queries (1 < 10 < 2) and turns them into strings in aggregation output, so tests that sort,
    range-query or aggregate on `_id` use these instead."""
    return f"k{i:05d}"


# --- raw wire helpers -------------------------------------------------------------------------


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def frame(request_id: int, opcode: int, body: bytes) -> bytes:
    return struct.pack("<iiii", 16 + len(body), request_id, 0, opcode) + body


def op_query(request_id: int, command: dict, db: str = "admin") -> bytes:
    body = (struct.pack("<i", 0) + f"{db}.$cmd".encode() + b"\0" + struct.pack("<ii", 0, -1)
            + bson.encode(command))
    return frame(request_id, OP_QUERY, body)


def op_msg(request_id: int, command: dict, flags: int = 0) -> bytes:
    return frame(request_id, OP_MSG, struct.pack("<I", flags) + b"\0" + bson.encode(command))


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def op_msg_with_checksum(request_id: int, command: dict, corrupt: bool = False) -> bytes:
    body = struct.pack("<I", CHECKSUM_PRESENT) + b"\0" + bson.encode(command)
    header = struct.pack("<iiii", 16 + len(body) + 4, request_id, 0, OP_MSG)
    checksum = crc32c(header + body) ^ (1 if corrupt else 0)
    return header + body + struct.pack("<I", checksum)


def read_reply(sock: socket.socket) -> tuple[int, int, dict]:
    """Reads one reply; returns (opcode, responseTo, document)."""
    length, _request_id, response_to, opcode = struct.unpack("<iiii", recv_exact(sock, 16))
    assert 16 < length <= 48_000_000, f"implausible reply length {length}"
    body = recv_exact(sock, length - 16)
    if opcode == OP_REPLY:
        _flags, _cursor, _start, returned = struct.unpack("<iqii", body[:20])
        assert returned == 1, f"OP_REPLY to a command should carry one document, got {returned}"
        return opcode, response_to, bson.decode(body[20:])
    if opcode == OP_MSG:
        assert body[4] == 0, "OP_MSG reply should start with a kind-0 body section"
        return opcode, response_to, bson.decode(body[5:])
    raise AssertionError(f"unexpected reply opcode {opcode}")


def raw_connection(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes the connection (after any reply bytes) within `timeout`."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


class Recorder(monitoring.CommandListener):
    def __init__(self):
        self.events: list[monitoring.CommandStartedEvent] = []

    def started(self, event):
        self.events.append(event)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass

    def named(self, name: str) -> list[monitoring.CommandStartedEvent]:
        return [e for e in self.events if e.command_name == name]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last is True:
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last check: {last!r}")


# --- handshake ----------------------------------------------------------------------------------


def assert_mongos_hello(reply: dict, how: str) -> None:
    assert reply.get("ok") == 1, f"{how}: hello failed: {reply}"
    assert reply.get("msg") == "isdbgrid", f"{how}: proxy must present itself as a mongos: {reply}"
    leaked = [f for f in BACKEND_TOPOLOGY_FIELDS if f in reply]
    assert not leaked, f"{how}: hello reveals backend topology fields {leaked}: {reply}"
    for field in ("maxBsonObjectSize", "maxMessageSizeBytes", "maxWriteBatchSize", "logicalSessionTimeoutMinutes",
                  "minWireVersion", "maxWireVersion"):
        assert isinstance(reply.get(field), int) and reply[field] >= 0, f"{how}: hello lacks {field}: {reply}"
    assert reply["maxBsonObjectSize"] <= reply["maxMessageSizeBytes"], reply
    assert reply["maxWireVersion"] >= reply["minWireVersion"], reply


def test_hello_presents_a_mongos(client):
    for name in ("hello", "isMaster", "ismaster"):
        assert_mongos_hello(client.admin.command(name), f"OP_MSG {name}")

    description = client.topology_description
    servers = description.server_descriptions()
    assert len(servers) == 1, f"driver should see exactly the proxy: {description}"
    (server,) = servers.values()
    assert server.server_type == SERVER_TYPE.Mongos, f"driver should see a mongos, saw {server.server_type_name}"
    assert description.topology_type == TOPOLOGY_TYPE.Sharded, description.topology_type_name
    assert list(servers) == [("127.0.0.1", client.address[1])], "driver must not learn any other address"


def test_legacy_handshake_is_answered_in_op_query_framing(proxy):
    with raw_connection(proxy.port) as sock:
        # What pymongo, and every driver without a stable API, sends first.
        sock.sendall(op_query(101, {"ismaster": 1, "helloOk": True,
                                    "client": {"driver": {"name": "raw", "version": "0"}}}))
        opcode, response_to, reply = read_reply(sock)
        assert opcode == OP_REPLY, f"OP_QUERY hello must be answered with OP_REPLY, got opcode {opcode}"
        assert response_to == 101
        assert_mongos_hello(reply, "OP_QUERY ismaster")
        assert reply.get("ismaster") is True or reply.get("isWritablePrimary") is True, reply
        assert reply.get("helloOk") is True, f"helloOk requested but not confirmed: {reply}"

        sock.sendall(op_query(102, {"hello": 1}))
        opcode, response_to, reply = read_reply(sock)
        assert (opcode, response_to) == (OP_REPLY, 102)
        assert_mongos_hello(reply, "OP_QUERY hello")

        # Later commands on the same connection come as OP_MSG and get OP_MSG back.
        sock.sendall(op_msg(103, {"hello": 1, "$db": "admin"}))
        opcode, response_to, reply = read_reply(sock)
        assert (opcode, response_to) == (OP_MSG, 103)
        assert_mongos_hello(reply, "OP_MSG hello on a raw socket")


@pytest.mark.parametrize("offered", [["zlib", "zstd", "snappy"], ["snappy", "zlib", "zstd"], ["zstd", "snappy", "zlib"]])
def test_handshake_picks_the_clients_first_compressor(proxy, offered):
    with raw_connection(proxy.port) as sock:
        sock.sendall(op_query(7, {"ismaster": 1, "helloOk": True, "compression": offered}))
        _, _, reply = read_reply(sock)
    chosen = reply.get("compression")
    assert chosen, f"client offered {offered}, proxy negotiated nothing: {reply}"
    assert chosen[0] == offered[0], f"client offered {offered}, proxy answered {chosen}"
    assert set(chosen) <= set(offered), f"proxy answered compressors the client did not offer: {chosen}"


def test_handshake_without_common_compressor_negotiates_none(proxy):
    with raw_connection(proxy.port) as sock:
        sock.sendall(op_query(8, {"ismaster": 1, "compression": ["lz4-nonexistent"]}))
        _, _, reply = read_reply(sock)
        assert reply.get("ok") == 1, reply
        assert not reply.get("compression"), f"no common compressor, yet proxy answered {reply['compression']}"
        sock.sendall(op_query(9, {"ismaster": 1}))
        _, _, reply = read_reply(sock)
        assert not reply.get("compression"), f"nothing offered, yet proxy answered {reply['compression']}"


# --- CRUD ---------------------------------------------------------------------------------------


def test_crud(fresh_db):
    coll = fresh_db.people
    people = [{"_id": key(i), "name": f"p{i}", "age": 20 + i % 7, "team": ["red", "blue", "green"][i % 3]}
              for i in range(30)]

    result = coll.insert_one(dict(people[0]))
    assert result.acknowledged and result.inserted_id == key(0)
    assert coll.insert_many([dict(p) for p in people[1:]]).inserted_ids == [p["_id"] for p in people[1:]]
    assert coll.find_one({"_id": key(4)}) == people[4]
    assert coll.count_documents({}) == len(people)
    assert coll.count_documents({"team": "red"}) == sum(p["team"] == "red" for p in people)
    assert sorted(coll.distinct("team")) == sorted({p["team"] for p in people})
    assert sorted(coll.distinct("age", {"team": "blue"})) == sorted({p["age"] for p in people if p["team"] == "blue"})

    result = coll.update_one({"_id": key(3)}, {"$set": {"age": 99}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    people[3]["age"] = 99
    assert coll.find_one({"_id": key(3)}) == people[3]

    greens = [p for p in people if p["team"] == "green"]
    result = coll.update_many({"team": "green"}, {"$inc": {"age": 1}})
    assert (result.matched_count, result.modified_count) == (len(greens), len(greens))
    for p in greens:
        p["age"] += 1
    assert list(coll.find({"team": "green"}).sort("_id", 1)) == greens

    result = coll.update_one({"_id": key(1000)}, {"$set": {"name": "upserted"}}, upsert=True)
    assert result.matched_count == 0 and result.upserted_id == key(1000)
    people.append({"_id": key(1000), "name": "upserted"})

    result = coll.replace_one({"_id": key(7)}, {"name": "replaced", "age": 1})
    assert (result.matched_count, result.modified_count) == (1, 1)
    people[7] = {"_id": key(7), "name": "replaced", "age": 1}
    assert coll.find_one({"_id": key(7)}) == people[7]

    before = coll.find_one_and_update({"_id": key(9)}, {"$set": {"age": 50}})
    assert before == people[9]
    people[9]["age"] = 50
    after = coll.find_one_and_update({"_id": key(10)}, {"$inc": {"age": 5}}, return_document=ReturnDocument.AFTER)
    people[10]["age"] += 5
    assert after == people[10]

    assert coll.delete_one({"_id": key(2)}).deleted_count == 1
    people = [p for p in people if p["_id"] != key(2)]
    reds = [p for p in people if p.get("team") == "red"]
    assert coll.delete_many({"team": "red"}).deleted_count == len(reds)
    people = [p for p in people if p.get("team") != "red"]

    assert coll.count_documents({}) == len(people)
    assert list(coll.find().sort("_id", 1)) == sorted(people, key=lambda p: p["_id"])

    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"_id": key(4)})
    assert coll.find_one({"_id": key(4)}) == people[[p["_id"] for p in people].index(key(4))], \
        "a failed insert changed data"


def test_cursor_drained_over_many_get_more_batches(proxy, fresh_db):
    docs = [{"_id": key(i), "v": i * i} for i in range(1000)]
    fresh_db.nums.insert_many(docs)

    recorder = Recorder()
    with mongo_client(proxy.port, event_listeners=[recorder]) as c:
        got = list(c[fresh_db.name].nums.find({}, batch_size=7).sort("_id", 1))
    assert got == docs
    get_mores = recorder.named("getMore")
    assert len(get_mores) >= len(docs) // 7, f"expected ~{len(docs) // 7} getMore batches, saw {len(get_mores)}"
    assert len({e.command["getMore"] for e in get_mores}) == 1, "one cursor should serve every batch"


def test_aggregate(fresh_db):
    rng = random.Random(20240611)
    orders = [{"_id": key(i), "customer": f"c{rng.randrange(8)}", "amount": rng.randrange(1, 500),
               "status": rng.choice(["open", "paid", "void"])} for i in range(300)]
    fresh_db.orders.insert_many(orders)

    pipeline = [
        {"$match": {"status": {"$ne": "void"}}},
        {"$group": {"_id": "$customer", "total": {"$sum": "$amount"}, "n": {"$sum": 1}}},
        {"$sort": {"total": -1, "_id": 1}},
        {"$project": {"_id": 0, "customer": "$_id", "total": 1, "n": 1}},
    ]
    got = list(fresh_db.orders.aggregate(pipeline))

    totals: dict[str, list[int]] = {}
    for o in orders:
        if o["status"] != "void":
            t = totals.setdefault(o["customer"], [0, 0])
            t[0] += o["amount"]
            t[1] += 1
    expected = sorted(({"customer": c, "total": t, "n": n} for c, (t, n) in totals.items()),
                      key=lambda d: (-d["total"], d["customer"]))
    assert got == expected

    # A pipeline whose result spans getMore batches.
    got = list(fresh_db.orders.aggregate([{"$match": {"amount": {"$gte": 100}}}, {"$sort": {"_id": 1}},
                                          {"$project": {"amount": 1}}], batchSize=11))
    assert got == [{"_id": o["_id"], "amount": o["amount"]} for o in orders if o["amount"] >= 100]


def test_insert_many_ten_thousand_in_several_batches(proxy, fresh_db):
    # ~6 KB per document makes ~60 MB in total, so pymongo must split it into several OP_MSG
    # document-sequence batches of up to maxMessageSizeBytes each.
    pad = "x" * 6000
    docs = [{"_id": i, "n": i, "even": i % 2 == 0, "pad": pad} for i in range(10_000)]
    recorder = Recorder()
    with mongo_client(proxy.port, event_listeners=[recorder]) as c:
        coll = c[fresh_db.name].bulk
        result = coll.insert_many(docs)
        assert len(result.inserted_ids) == len(docs)

        inserts = recorder.named("insert")
        assert len(inserts) >= 2, f"expected several insert batches, pymongo sent {len(inserts)}"
        assert sum(len(e.command["documents"]) for e in inserts) == len(docs)

        assert coll.count_documents({}) == len(docs)
        assert coll.count_documents({"even": True}) == len(docs) // 2
        for i in random.Random(7).sample(range(len(docs)), 25) + [0, len(docs) - 1]:
            assert coll.find_one({"_id": i}) == docs[i]
        last_batch_first = sum(len(e.command["documents"]) for e in inserts[:-1])
        assert coll.find_one({"_id": last_batch_first}, {"pad": 0}) == {"_id": last_batch_first, "n": last_batch_first,
                                                                           "even": last_batch_first % 2 == 0}


# --- compression --------------------------------------------------------------------------------


def crud_round(coll) -> int:
    """A few commands of each kind; returns how many commands it sent."""
    coll.drop()
    big = "compressible " * 20_000  # ~260 KB: exercises buffers beyond one read
    coll.insert_one({"_id": key(1), "big": big})
    coll.insert_many([{"_id": key(i), "v": i} for i in range(2, 50)])
    assert coll.find_one({"_id": key(1)})["big"] == big
    assert coll.update_one({"_id": key(2)}, {"$set": {"v": -2}}).modified_count == 1
    assert coll.count_documents({"v": {"$lt": 0}}) == 1
    assert coll.delete_one({"_id": key(3)}).deleted_count == 1
    assert [d["_id"] for d in coll.find({}, {"_id": 1}).sort("_id", 1)] == [key(i) for i in range(1, 50) if i != 3]
    return 7


def compressors_used(proxy, offset: int, expected: str) -> list[str]:
    text = proxy.wait_for_stderr(offset, re.compile(rf'compressor="?{expected}\b'))
    return COMPRESSOR_FIELD.findall(text)


@pytest.mark.parametrize("compressor", ["zstd", "snappy", "zlib"])
def test_compressed_crud(proxy, compressor):
    offset = proxy.stderr_size()
    with mongo_client(proxy.port, compressors=compressor) as c:
        sent = crud_round(c.compression[compressor])
        used = compressors_used(proxy, offset, compressor)
    assert used, (f"client asked for {compressor} but the proxy logged no compressed request "
                  f"(RUST_LOG=tenantwall=debug); stderr since start of test:\n{proxy.stderr_since(offset)[-3000:]}")
    assert set(used) == {compressor}, f"client asked for {compressor}, proxy saw {sorted(set(used))}"
    assert len(used) >= sent, f"{sent} commands sent, only {len(used)} arrived compressed"


@pytest.mark.parametrize("offered", ["snappy,zstd,zlib", "zlib,snappy,zstd", "zstd,zlib,snappy"])
def test_client_offering_all_compressors_gets_its_first(proxy, offered):
    first = offered.split(",")[0]
    offset = proxy.stderr_size()
    with mongo_client(proxy.port, compressors=offered) as c:
        crud_round(c.compression["all_" + first])
        used = compressors_used(proxy, offset, first)
    assert set(used) == {first}, f"client offered {offered}, proxy saw {sorted(set(used)) or 'no compression'}"


# --- unacknowledged writes ----------------------------------------------------------------------


def test_unacknowledged_writes(proxy, fresh_db):
    # One pooled connection, so the acknowledged commands below share the socket the w=0 writes
    # used: a stray reply to a moreToCome message would desync it.
    with mongo_client(proxy.port, maxPoolSize=1) as c:
        acked = c[fresh_db.name].w0
        unacked = acked.with_options(write_concern=WriteConcern(w=0))

        assert not unacked.insert_one({"_id": key(1), "v": 1}).acknowledged
        unacked.insert_many([{"_id": key(i), "v": i} for i in range(2, 41)], ordered=False)
        unacked.update_one({"_id": key(1)}, {"$set": {"v": 100}})
        unacked.update_many({"v": {"$gte": 30}}, {"$set": {"late": True}})
        unacked.delete_one({"_id": key(2)})
        unacked.delete_many({"v": {"$gte": 38, "$lt": 100}})

        # The same connection must still be usable right away.
        assert c.admin.command("ping")["ok"] == 1
        assert c.admin.command("hello")["ok"] == 1

        # update_many ran after update_one, so the v=100 document is "late" too.
        expected = [{"_id": key(1), "v": 100, "late": True}] + [
            {"_id": key(i), "v": i, **({"late": True} if i >= 30 else {})} for i in range(3, 38)]
        def applied():
            current = list(acked.find().sort("_id", 1))
            return True if current == expected else current

        wait_until(applied, 10.0, "the unacknowledged writes to be applied in order")

        acked.insert_one({"_id": "after"})
        assert acked.count_documents({}) == len(expected) + 1


def test_more_to_come_request_gets_no_reply(proxy, fresh_db):
    """At the wire level: a request flagged moreToCome must get no reply at all (nx-27017 answers
    it anyway; a proxy that relays that answer shifts every later reply by one)."""
    with raw_connection(proxy.port) as sock:
        sock.sendall(op_query(1, {"ismaster": 1, "helloOk": True}))
        read_reply(sock)
        sock.sendall(op_msg(2, {"insert": "raw_w0", "documents": [{"_id": "a"}], "writeConcern": {"w": 0},
                                "$db": fresh_db.name}, flags=MORE_TO_COME))
        sock.sendall(op_msg(3, {"ping": 1, "$db": "admin"}))
        opcode, response_to, reply = read_reply(sock)
        assert (opcode, response_to) == (OP_MSG, 3), \
            f"first reply after a moreToCome request answers request {response_to}, expected the ping (3): {reply}"
        assert reply.get("ok") == 1, reply
        sock.settimeout(0.5)
        try:
            extra = sock.recv(16)
        except TimeoutError:
            extra = b""
        assert extra == b"", "proxy sent a reply nobody asked for"

    def visible():
        return fresh_db.raw_w0.find_one({"_id": "a"}) == {"_id": "a"} or "not yet"

    wait_until(visible, 10.0, "the moreToCome insert to be applied")


# --- proxy and backend agree ------------------------------------------------------------------


def deterministic_workload(db) -> list:
    """Every result a driver sees, in order; `_id`s are ours so no ObjectId differs."""
    c = db.items
    c.drop()
    out: list = []
    docs = [{"_id": key(i), "g": i % 5, "v": (i * 37) % 101, "name": f"n{i:03d}", "tags": [i % 2, i % 3],
             "sub": {"k": i % 4}} for i in range(200)]
    out.append(("insert_many", c.insert_many(docs).inserted_ids))
    out.append(("insert_one", c.insert_one({"_id": key(1000), "g": 9, "v": 0}).inserted_id))
    try:
        c.insert_one({"_id": key(5)})
        out.append(("duplicate", "no error"))
    except DuplicateKeyError as e:
        out.append(("duplicate", e.code))
    out.append(("find sort/skip/limit/projection",
                list(c.find({"v": {"$gt": 20}}, {"name": 1, "v": 1}).sort([("v", -1), ("_id", 1)]).skip(5).limit(20))))
    out.append(("find exclusion", list(c.find({"g": 2}, {"tags": 0}).sort("_id", 1))))
    out.append(("find dotted/in", list(c.find({"sub.k": {"$in": [1, 3]}, "v": {"$lte": 50}}).sort("_id", -1).limit(15))))
    out.append(("find_one", c.find_one({"name": "n042"})))
    out.append(("count", c.count_documents({"g": {"$in": [1, 3]}})))
    out.append(("count skip/limit", c.count_documents({"v": {"$gte": 10}}, skip=3, limit=40)))
    out.append(("estimated count", c.estimated_document_count()))
    out.append(("distinct", sorted(c.distinct("g"))))
    out.append(("distinct filtered", sorted(c.distinct("v", {"g": 3}))))
    out.append(("aggregate", list(c.aggregate([
        {"$match": {"v": {"$gte": 10}}},
        {"$group": {"_id": "$g", "total": {"$sum": "$v"}, "n": {"$sum": 1}, "top": {"$max": "$v"}}},
        {"$sort": {"_id": 1}},
        {"$project": {"total": 1, "n": 1, "top": 1}},
    ]))))
    r = c.update_many({"g": 1}, {"$inc": {"v": 1000}})
    out.append(("update_many", r.matched_count, r.modified_count, r.upserted_id))
    r = c.update_one({"_id": key(5000)}, {"$set": {"v": 1}}, upsert=True)
    out.append(("upsert", r.matched_count, r.modified_count, r.upserted_id))
    r = c.replace_one({"_id": key(17)}, {"replaced": True})
    out.append(("replace_one", r.matched_count, r.modified_count))
    out.append(("find_one_and_update", c.find_one_and_update({"_id": key(18)}, {"$set": {"v": -1}},
                                                             return_document=ReturnDocument.AFTER)))
    out.append(("delete_one", c.delete_one({"_id": key(19)}).deleted_count))
    out.append(("delete_many", c.delete_many({"g": 4}).deleted_count))
    out.append(("final", list(c.find().sort("_id", 1))))
    return out


def test_results_identical_direct_and_through_proxy(client, direct_client):
    direct = deterministic_workload(direct_client.direct_cmp)
    proxied = deterministic_workload(client.proxy_cmp)
    assert len(direct) == len(proxied)
    for d, p in zip(direct, proxied):
        assert p == d, f"result of {d[0]!r} differs through the proxy"

    # Raw command replies too, apart from what must differ (cursor id, namespace).
    def raw_find(db):
        reply = db.command("find", "items", filter={"g": 2}, sort={"_id": 1}, batchSize=3)
        reply["cursor"]["id"] = bool(reply["cursor"]["id"])
        reply["cursor"]["ns"] = reply["cursor"]["ns"].split(".", 1)[1]
        return reply

    assert raw_find(client.proxy_cmp) == raw_find(direct_client.direct_cmp)
    assert (client.proxy_cmp.command("count", "items", query={"v": {"$gt": 500}})
            == direct_client.direct_cmp.command("count", "items", query={"v": {"$gt": 500}}))


# --- many clients at once -----------------------------------------------------------------------


def test_concurrent_clients_get_their_own_replies(proxy, fresh_db):
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with mongo_client(proxy.port, maxPoolSize=2) as c:
                coll = c[fresh_db.name][f"w{n}"]
                for i in range(40):
                    coll.insert_one({"_id": i, "owner": n, "i": i})
                    assert coll.find_one({"_id": i}) == {"_id": i, "owner": n, "i": i}
                assert coll.count_documents({"owner": n}) == 40
                assert coll.count_documents({"owner": {"$ne": n}}) == 0
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


# --- hostile input ------------------------------------------------------------------------------


def test_op_msg_checksum_is_verified(proxy, fresh_db):
    # A correct CRC-32C: the command runs (nx-27017 does not understand checksumPresent, so the
    # proxy has to verify and drop the checksum rather than forward it).
    with raw_connection(proxy.port) as sock:
        sock.sendall(op_msg_with_checksum(1, {"insert": "crc", "documents": [{"_id": "c1"}], "$db": fresh_db.name}))
        opcode, response_to, reply = read_reply(sock)
        assert (opcode, response_to) == (OP_MSG, 1)
        assert reply.get("ok") == 1 and reply.get("n") == 1, f"checksummed insert failed: {reply}"
    assert fresh_db.crc.find_one({"_id": "c1"}) == {"_id": "c1"}

    # A wrong one: the message must not run (mongod closes the connection).
    with raw_connection(proxy.port) as sock:
        sock.sendall(op_msg_with_checksum(2, {"insert": "crc", "documents": [{"_id": "c2"}], "$db": fresh_db.name},
                                          corrupt=True))
        sock.settimeout(5.0)
        try:
            _, _, reply = read_reply(sock)
        except (ConnectionError, TimeoutError):
            reply = None
        assert reply is None or reply.get("ok") == 0, f"a message with a bad checksum was accepted: {reply}"
    assert fresh_db.crc.find_one({"_id": "c2"}) is None, "a message with a bad checksum was executed"


def test_proxy_survives_garbage(proxy, client):
    rng = random.Random(0xBAD)
    with raw_connection(proxy.port) as sock:
        sock.sendall(bytes(rng.randrange(256) for _ in range(300)))

    # messageLength below the header size: nothing valid can follow, so the proxy must hang up.
    with raw_connection(proxy.port) as sock:
        sock.sendall(struct.pack("<iiii", 5, 1, 0, OP_MSG))
        assert closed_by_peer(sock, 5.0), "proxy kept a connection open after messageLength 5"

    # messageLength far above maxMessageSizeBytes: the proxy must refuse it, not wait for 100 MB.
    with raw_connection(proxy.port) as sock:
        sock.sendall(struct.pack("<iiii", 100_000_000, 2, 0, OP_MSG) + b"\0" * 64)
        assert closed_by_peer(sock, 5.0), "proxy kept waiting for a 100,000,000-byte message"

    # Negative length.
    with raw_connection(proxy.port) as sock:
        sock.sendall(struct.pack("<iiii", -1, 3, 0, OP_MSG))
        assert closed_by_peer(sock, 5.0), "proxy kept a connection open after messageLength -1"

    # A well-framed OP_MSG whose body is not BSON, an unknown opcode, and a bad OP_COMPRESSED.
    for payload in (frame(4, OP_MSG, b"\0\0\0\0\0" + b"\xff" * 40),
                    frame(5, 9999, b"\0" * 24),
                    frame(6, OP_COMPRESSED, struct.pack("<iiB", OP_MSG, 1 << 20, 1) + b"\x01\x02\x03")):
        with raw_connection(proxy.port) as sock:
            sock.sendall(payload)
            sock.settimeout(2.0)
            try:
                sock.recv(65536)
            except (TimeoutError, ConnectionError):
                pass

    # A truncated frame left open: other clients must not wait for it.
    stalled = raw_connection(proxy.port)
    try:
        whole = op_msg(7, {"ping": 1, "$db": "admin"})
        stalled.sendall(whole[: len(whole) - 3])
        with mongo_client(proxy.port) as c:
            assert c.admin.command("ping")["ok"] == 1
    finally:
        stalled.close()

    for _ in range(20):
        with raw_connection(proxy.port) as sock:
            sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))

    assert proxy.alive(), "proxy process died"
    assert client.admin.command("ping")["ok"] == 1
    client.garbage_check.after.insert_one({"ok": True})
    assert client.garbage_check.after.count_documents({}) >= 1
    with mongo_client(proxy.port) as c:
        assert c.admin.command("ping")["ok"] == 1


# --- process contract ---------------------------------------------------------------------------


@pytest.mark.skipif(DIRECT, reason="needs the proxy process")
def test_stops_on_sigterm(start_proxy):
    p = start_proxy()
    with mongo_client(p.port) as c:
        assert c.admin.command("ping")["ok"] == 1
    p.proc.send_signal(signal.SIGTERM)
    try:
        code = p.proc.wait(10)
    except Exception:  # noqa: BLE001
        pytest.fail("tenantwall did not stop within 10s of SIGTERM")
    assert code == 0, f"tenantwall should exit 0 on SIGTERM, exited {code}"


@pytest.mark.skipif(DIRECT, reason="needs the proxy process")
def test_stdout_is_only_the_ready_line(proxy, client):
    assert client.admin.command("ping")["ok"] == 1
    assert proxy.stdout_lines == [f"tenantwall: listening on 127.0.0.1:{proxy.port}"], \
        "stdout must carry exactly the ready line; logs belong on stderr"


@pytest.mark.skipif(DIRECT or os.environ.get("TW_SKIP_LOG_CHECK") == "1", reason="needs the proxy process")
def test_debug_log_names_each_command(proxy, fresh_db):
    offset = proxy.stderr_size()
    fresh_db.logged.insert_one({"_id": 1})
    fresh_db.logged.find_one({"_id": 1})
    text = proxy.wait_for_stderr(offset, re.compile(r"\bfind\b"))
    assert re.search(r"\binsert\b", text) and re.search(r"\bfind\b", text), \
        f"RUST_LOG=tenantwall=debug should log each command by name; got:\n{text[-2000:]}"


def test_load_balanced_mode_works_through_the_proxy(proxy):
    """Drivers in load-balanced mode (behind an L4 balancer) require a serviceId in hello."""
    from pymongo import MongoClient

    client = MongoClient(f"mongodb://127.0.0.1:{proxy.port}/?loadBalanced=true", serverSelectionTimeoutMS=5000)
    try:
        coll = client.lbtest.items
        coll.insert_many([{"i": i} for i in range(12)])
        assert [d["i"] for d in coll.find({}, batch_size=5).sort("i", 1)] == list(range(12))
    finally:
        client.close()
