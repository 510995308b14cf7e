#!/usr/bin/env python3
"""Writes the fuzz seeds in fuzz/seeds/<target>/ (run from anywhere; standard library only).

The seeds are small valid inputs, so each target starts from the shapes it must handle: OP_MSG frames (plain,
with a document sequence, with a checksum, compressed), the legacy OP_QUERY handshake, commands for every rule
mode of the request_path policy, SCRAM messages and policy files.
"""

import base64
import pathlib
import struct
import zlib

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent

OP_REPLY, OP_QUERY, OP_COMPRESSED, OP_MSG = 1, 2004, 2012, 2013
CHECKSUM_PRESENT = 1


# --- BSON, only the types the seeds use ------------------------------------------------------------------------

def cstring(s):
    return s.encode() + b"\0"


def element(key, value):
    if isinstance(value, bool):
        return b"\x08" + cstring(key) + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x10" + cstring(key) + struct.pack("<i", value)
    if isinstance(value, float):
        return b"\x01" + cstring(key) + struct.pack("<d", value)
    if isinstance(value, str):
        data = value.encode() + b"\0"
        return b"\x02" + cstring(key) + struct.pack("<i", len(data)) + data
    if isinstance(value, Uuid):
        return b"\x05" + cstring(key) + struct.pack("<i", len(value.data)) + b"\x04" + value.data
    if isinstance(value, dict):
        return b"\x03" + cstring(key) + document(value)
    if isinstance(value, list):
        return b"\x04" + cstring(key) + document({str(i): v for i, v in enumerate(value)})
    raise TypeError(type(value))


class Uuid:
    def __init__(self, data):
        self.data = data


def document(fields):
    body = b"".join(element(k, v) for k, v in fields.items())
    return struct.pack("<i", 4 + len(body) + 1) + body + b"\0"


# --- Wire protocol ---------------------------------------------------------------------------------------------

def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def header(length, op_code, request_id=1, response_to=0):
    return struct.pack("<iiii", length, request_id, response_to, op_code)


def sections(body, sequences=()):
    """OP_MSG sections after the flags: the body (kind 0), then document sequences (kind 1)."""
    out = b"\x00" + document(body)
    for identifier, docs in sequences:
        payload = cstring(identifier) + b"".join(document(d) for d in docs)
        out += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    return out


def op_msg(body, sequences=(), flags=0):
    rest = struct.pack("<I", flags) + sections(body, sequences)
    checksum = 4 if flags & CHECKSUM_PRESENT else 0
    frame = header(16 + len(rest) + checksum, OP_MSG) + rest
    if checksum:
        frame += struct.pack("<I", crc32c(frame))
    return frame


def op_query(collection, query):
    rest = struct.pack("<i", 0) + cstring(collection) + struct.pack("<ii", 0, -1) + document(query)
    return header(16 + len(rest), OP_QUERY) + rest


def op_compressed_zlib(frame):
    original_op = struct.unpack("<i", frame[12:16])[0]
    compressed = zlib.compress(frame[16:])
    rest = struct.pack("<ii", original_op, len(frame) - 16) + b"\x02" + compressed
    return header(16 + len(rest), OP_COMPRESSED) + rest


# --- Seeds -----------------------------------------------------------------------------------------------------

LSID = {"id": Uuid(bytes(range(16)))}

FIND = {"find": "orders", "filter": {"status": "open"}, "limit": 10, "$db": "app"}
INSERT = ({"insert": "orders", "ordered": True, "$db": "app"},
          [("documents", [{"_id": 1, "item": "pen"}, {"_id": 2, "item": "ink", "qty": 3}])])
AGGREGATE = {
    "aggregate": "orders",
    "pipeline": [
        {"$match": {"status": "open"}},
        {"$lookup": {"from": "invoices", "localField": "invoice", "foreignField": "_id", "as": "inv"}},
        {"$project": {"item": 1, "inv": 1}},
    ],
    "cursor": {},
    "$db": "app",
}

REQUESTS = {
    "find_orders": (FIND, ()),
    "insert_orders_sequence": INSERT,
    "aggregate_lookup": (AGGREGATE, ()),
    "update_orders": ({"update": "orders", "updates": [{"q": {"item": "pen"}, "u": {"$set": {"qty": 5}}}],
                       "$db": "app"}, ()),
    "delete_orders": ({"delete": "orders", "deletes": [{"q": {"qty": 0}, "limit": 1}], "$db": "app"}, ()),
    "find_invoices_lsid": ({"find": "invoices", "filter": {}, "lsid": LSID, "$db": "app"}, ()),
    "insert_events_verify": ({"insert": "events", "documents": [{"tenantId": "acme", "x": 1}], "$db": "app"}, ()),
    "count_logs_audit": ({"count": "logs", "query": {"level": "warn"}, "$db": "app"}, ()),
    "find_tenantdb": ({"find": "things", "filter": {"a": {"$gt": 1}}, "$db": "tenantdb"}, ()),
    "distinct_ref": ({"distinct": "countries", "key": "code", "$db": "ref"}, ()),
    "list_collections": ({"listCollections": 1, "nameOnly": True, "$db": "app"}, ()),
    "end_sessions": ({"endSessions": [LSID], "$db": "admin"}, ()),
}


def write(target, name, data):
    path = HERE / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main():
    # frame_decode: whole frames.
    write("frame_decode", "find", op_msg(FIND))
    write("frame_decode", "insert_sequence", op_msg(*INSERT))
    write("frame_decode", "aggregate_lookup", op_msg(AGGREGATE))
    write("frame_decode", "ping_checksum", op_msg({"ping": 1, "$db": "admin"}, flags=CHECKSUM_PRESENT))
    write("frame_decode", "find_zlib", op_compressed_zlib(op_msg(FIND)))
    write("frame_decode", "ismaster_query", op_query("admin.$cmd", {"isMaster": 1, "client": {"app": "x"}}))

    # request_path: bare sections (framed by the target), and one whole frame.
    for name, (body, sequences) in REQUESTS.items():
        write("request_path", name, sections(body, sequences)[1:])
    write("request_path", "find_frame", op_msg(FIND))

    # bson_validate: documents.
    write("bson_validate", "find", document(FIND))
    write("bson_validate", "aggregate", document(AGGREGATE))
    write("bson_validate", "scalars", document({"b": True, "i": -7, "d": 1.5, "s": "", "u": Uuid(bytes(16))}))
    write("bson_validate", "empty", document({}))

    # scram_messages: client-first 0xff client-final 0xff verifier; %r stands for the combined nonce.
    verifier = ("SCRAM-SHA-256$15000:H6upRierwGdSZ/u0t7wZWFKfehBFkzrCRICj4Q==$"
                "ICpIOcx7488xPQYyQsz01NI8G/OU/RceY9VwIYK/A/w=:TdYTwe0vRg+2NUbM1IU/KOUfT/hWw7U7lf2GmGoDGBs=")
    proof = base64.b64encode(bytes(32)).decode()
    final = f"c=biws,r=%r,p={proof}"
    write("scram_messages", "known_user", b"\xff".join([b"n,,n=user,r=abcdefgh", final.encode(), verifier.encode()]))
    write("scram_messages", "unknown_user", b"\xff".join([b"n,,n=user,r=abcdefgh", final.encode()]))
    write("scram_messages", "escaped_y_flag",
          b"\xff".join([b"y,,n=a=2Cb=3Dc,r=rOprNGfwEbeRWgbNEkqO", f"c=eSws,r=%r,p={proof}".encode()]))

    # policy_compile: the example policies and the request_path one.
    for name in ["demo", "collection", "database", "field"]:
        write("policy_compile", name, (REPO / "policies" / f"{name}.toml").read_bytes())
    request_path = (HERE.parent / "fuzz_targets" / "request_path.rs").read_text()
    write("policy_compile", "request_path", request_path.split('r#"', 1)[1].split('"#', 1)[0].encode())


if __name__ == "__main__":
    main()
