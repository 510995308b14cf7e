//! Frame-level behaviour: legacy handshakes, malformed and hostile input, moreToCome, exhaust, compression,
//! checksums, and failures of the backend. Every test ends by checking that the proxy still serves others.

mod common;

use std::time::Duration;

use bson::{rawdoc, RawDocumentBuf};
use common::{command, msg, ok, start_proxy, start_proxy_with, Backend, RawClient};
use tenantwall_protocol::compression::compress_frame;
use tenantwall_protocol::{Compressor, Message, MsgFlags, MsgHeader, OpCode, OpMsg, OpQuery, Sequence};

/// A fresh client can still ping through the proxy.
fn assert_still_serving(addr: std::net::SocketAddr) {
    let mut other = RawClient::connect(addr);
    let reply = command(&mut other, &msg(rawdoc! { "ping": 1, "$db": "admin" }));
    assert_eq!(ok(&reply), 1.0, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_op_query_handshake_is_answered_as_mongos() {
    let backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        let hello = OpQuery::command_on(
            "admin",
            rawdoc! { "$query": { "isMaster": 1, "helloOk": true, "compression": ["zstd"] }, "$readPreference": { "mode": "primaryPreferred" } },
        );
        client.send(&hello.encode(7).unwrap());
        let reply = client.recv().unwrap();
        assert_eq!(reply.header.op_code, OpCode::REPLY);
        assert_eq!(reply.header.response_to, 7);
        let Message::Reply(reply) = reply.message else { panic!("not OP_REPLY") };
        let doc = reply.documents().next().unwrap();
        assert_eq!(doc.get_str("msg").unwrap(), "isdbgrid");
        assert!(doc.get_bool("ismaster").unwrap());
        assert_eq!(doc.get_array("compression").unwrap().get_str(0).unwrap(), "zstd");
        for key in ["hosts", "setName", "me", "topologyVersion"] {
            assert!(doc.get(key).unwrap().is_none(), "{key} revealed");
        }

        // Any other OP_QUERY command is refused like a 5.1+ server does.
        client.send(&OpQuery::command_on("admin", rawdoc! { "listDatabases": 1 }).encode(8).unwrap());
        let Message::Reply(reply) = client.recv().unwrap().message else { panic!("not OP_REPLY") };
        assert_eq!(reply.documents().next().unwrap().get_i32("code").unwrap(), 352);

        // OP_QUERY on a collection (a legacy find) gets the query-failure reply.
        let mut find = OpQuery::command_on("app", rawdoc! { "x": 1 });
        find.full_collection_name = "app.items".into();
        client.send(&find.encode(9).unwrap());
        let Message::Reply(reply) = client.recv().unwrap().message else { panic!("not OP_REPLY") };
        assert_eq!(reply.response_flags & 2, 2);
        assert_eq!(reply.documents().next().unwrap().get_i32("code").unwrap(), 5739101);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_impossible_lengths_close_only_that_connection() {
    let backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            [5i32.to_le_bytes().as_slice(), &[0; 12]].concat(),
            [(-1i32).to_le_bytes().as_slice(), &[0; 12]].concat(),
            [100_000_000i32.to_le_bytes().as_slice(), &[0; 12]].concat(),
        ];
        for case in cases {
            let mut client = RawClient::connect(addr);
            client.send(&case);
            assert!(client.is_closed(), "proxy kept a connection open after {:?}", &case[..8]);
        }
        // Unknown opcode and legacy fire-and-forget writes: closed.
        for op in [OpCode::INSERT, OpCode(4242)] {
            let mut frame = Vec::new();
            MsgHeader { message_length: 26, request_id: 1, response_to: 0, op_code: op }.write(&mut frame);
            frame.extend_from_slice(&[0; 10]);
            let mut client = RawClient::connect(addr);
            client.send(&frame);
            assert!(client.is_closed(), "{op:?} not closed");
        }
        // A client that disconnects in the middle of a frame.
        let mut client = RawClient::connect(addr);
        let ping = msg(rawdoc! { "ping": 1, "$db": "admin" });
        client.send(&ping[..ping.len() - 3]);
        drop(client);
        assert_still_serving(addr);
    })
    .await
    .unwrap();
    assert!(proxy.stats().compressed(Compressor::Zstd) == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_server_shaped_errors_and_the_connection_goes_on() {
    let backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        // Invalid UTF-8 inside the body: InvalidBSON.
        let mut bad = msg(rawdoc! { "find": "items", "filter": { "name": "ab" }, "$db": "app" });
        let at = bad.windows(2).position(|w| w == b"ab").unwrap();
        bad[at] = 0xff;
        let reply = command(&mut client, &bad);
        assert_eq!(reply.get_i32("code").unwrap(), 22, "{reply:?}");
        // Kind-2 section (security token) from a client.
        let mut kind2 = msg(rawdoc! { "ping": 1, "$db": "admin" });
        kind2.extend_from_slice(&[2, 5, 0, 0, 0, 0]);
        let len = kind2.len() as i32;
        kind2[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(command(&mut client, &kind2).get_i32("code").unwrap(), 40432);
        // Unknown command, forbidden command, missing $db, smuggled $tenant.
        assert_eq!(command(&mut client, &msg(rawdoc! { "frobnicate": 1, "$db": "app" })).get_i32("code").unwrap(), 59);
        assert_eq!(command(&mut client, &msg(rawdoc! { "mapReduce": "c", "$db": "app" })).get_i32("code").unwrap(), 13);
        assert_eq!(command(&mut client, &msg(rawdoc! { "find": "c" })).get_i32("code").unwrap(), 40571);
        let tenant = msg(rawdoc! { "find": "c", "$db": "app", "$tenant": bson::oid::ObjectId::new() });
        // Not in the command surface: refused like mongod refuses an unknown field, with the field named.
        let reply = command(&mut client, &tenant);
        assert_eq!(reply.get_i32("code").unwrap(), 40415, "{reply:?}");
        assert!(reply.get_str("errmsg").unwrap().contains("find.$tenant"), "{reply:?}");
        // The same connection still works.
        assert_eq!(ok(&command(&mut client, &msg(rawdoc! { "ping": 1, "$db": "admin" }))), 1.0);
        // An unknown required flag bit closes, as on a server.
        let illegal = OpMsg::new(MsgFlags(1 << 5), rawdoc! { "ping": 1, "$db": "admin" }).encode(1, 0).unwrap();
        client.send(&illegal);
        assert!(client.is_closed());
        assert_still_serving(addr);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_are_verified_and_compressed_requests_get_compressed_replies() {
    let backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        let with_crc = OpMsg::new(MsgFlags(MsgFlags::CHECKSUM_PRESENT), rawdoc! { "ping": 1, "$db": "admin" })
            .encode(3, 0)
            .unwrap()
            .to_vec();
        assert_eq!(ok(&command(&mut client, &with_crc)), 1.0);

        for compressor in Compressor::ALL {
            let frame = msg(rawdoc! { "ping": 1, "$db": "admin" });
            client.send(&compress_frame(&frame, compressor).unwrap());
            let reply = client.recv().unwrap();
            assert_eq!(reply.compressor, Some(compressor));
            assert_eq!(reply.header.response_to, 100);
        }

        let mut corrupt = with_crc.clone();
        let n = corrupt.len();
        corrupt[n - 1] ^= 0xff;
        client.send(&corrupt);
        assert!(client.is_closed(), "checksum mismatch must close");
        assert_still_serving(addr);
    })
    .await
    .unwrap();
    assert!(proxy.stats().compressed(Compressor::Snappy) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_to_come_writes_get_no_reply_and_exhaust_does_not_hang() {
    let backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        // Unacknowledged insert carried as a document sequence with moreToCome.
        let insert = OpMsg::with_sequences(
            MsgFlags(MsgFlags::MORE_TO_COME),
            rawdoc! { "insert": "w0", "$db": "app", "writeConcern": { "w": 0 } },
            (0..30).map(|i| Sequence::new("documents", vec![rawdoc! { "_id": i }])).take(1).collect(),
        );
        client.send(&insert.encode(10, 0).unwrap());
        let many = OpMsg::with_sequences(
            MsgFlags(MsgFlags::MORE_TO_COME),
            rawdoc! { "insert": "w0", "$db": "app", "writeConcern": { "w": 0 } },
            vec![Sequence::new("documents", (1..30).map(|i| rawdoc! { "_id": i }).collect())],
        );
        client.send(&many.encode(11, 0).unwrap());
        // The next acknowledged command gets its own reply, not a stray one.
        let mut reply = RawDocumentBuf::new();
        for _ in 0..100 {
            reply = command(&mut client, &msg(rawdoc! { "count": "w0", "$db": "app" }));
            if reply.get_i32("n").ok() == Some(30) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(reply.get_i32("n").ok(), Some(30), "{reply:?}");

        // A find with a small batch, then getMore with exhaustAllowed: the proxy asks for one batch at a time,
        // so the client gets exactly one reply without moreToCome and the connection stays in step.
        let find = command(&mut client, &msg(rawdoc! { "find": "w0", "batchSize": 2, "$db": "app" }));
        let cursor = find.get_document("cursor").unwrap();
        let id = cursor.get_i64("id").unwrap();
        assert_ne!(id, 0);
        let get_more = OpMsg::new(
            MsgFlags(MsgFlags::EXHAUST_ALLOWED),
            rawdoc! { "getMore": id, "collection": "w0", "batchSize": 5, "$db": "app" },
        )
        .encode(12, 0)
        .unwrap();
        client.send(&get_more);
        let reply = client.recv().unwrap();
        let Message::Msg(reply) = reply.message else { panic!("not OP_MSG") };
        assert!(!reply.flags.more_to_come());
        assert_eq!(reply.body().get_document("cursor").unwrap().get_array("nextBatch").unwrap().into_iter().count(), 5);
        assert_eq!(ok(&command(&mut client, &msg(rawdoc! { "ping": 1, "$db": "admin" }))), 1.0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_frame_is_closed() {
    let backend = Backend::start();
    let proxy = start_proxy_with(&backend.uri(), "[limits]\nframe_timeout_secs = 1\n").await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut slow = RawClient::connect(addr);
        let ping = msg(rawdoc! { "ping": 1, "$db": "admin" });
        slow.send(&ping[..10]);
        let started = std::time::Instant::now();
        assert!(slow.is_closed());
        assert!(started.elapsed() < Duration::from_secs(8));
        assert_still_serving(addr);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_costs_its_clients_an_error_not_the_proxy() {
    let mut backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let addr = proxy.addr();
    let port = backend.port;
    let mut client = tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        assert_eq!(ok(&command(&mut client, &msg(rawdoc! { "ping": 1, "$db": "admin" }))), 1.0);
        client
    })
    .await
    .unwrap();
    backend.kill();
    let client = tokio::task::spawn_blocking(move || {
        let reply = command(&mut client, &msg(rawdoc! { "find": "items", "$db": "app" }));
        assert_eq!(reply.get_i32("code").unwrap(), 6, "{reply:?}");
        assert_eq!(reply.get_str("codeName").unwrap(), "HostUnreachable");
        let text = format!("{reply:?}");
        assert!(!text.contains(&port.to_string()), "error reveals the backend: {text}");
        // Handshakes are still answered locally while the backend is down.
        let hello = command(&mut client, &msg(rawdoc! { "hello": 1, "$db": "admin" }));
        assert_eq!(hello.get_str("msg").unwrap(), "isdbgrid");
        client
    })
    .await
    .unwrap();
    drop(client);
    assert!(proxy.stats().backend_errors.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
