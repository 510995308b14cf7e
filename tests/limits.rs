//! Hostile clients and failing backends: every per-client and global limit of `[limits]`, each shown against a
//! real nx-27017 and raw frames on loopback, and each test ending with the proxy still serving others.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bson::{rawdoc, RawDocumentBuf};
use common::{command, msg, ok, scram_entry, start_proxy, start_proxy_text, start_proxy_with, Backend, RawClient};
use tenantwall_protocol::compression::compress_frame;
use tenantwall_protocol::{Compressor, Message, MsgFlags, OpMsg};

fn assert_still_serving(addr: SocketAddr) {
    let mut other = RawClient::connect(addr);
    let reply = command(&mut other, &msg(rawdoc! { "ping": 1, "$db": "admin" }));
    assert_eq!(ok(&reply), 1.0, "{reply:?}");
}

/// An insert of one document padded to about `pad` bytes.
fn padded_insert(pad: usize) -> Vec<u8> {
    msg(rawdoc! { "insert": "items", "documents": [{ "pad": "x".repeat(pad) }], "$db": "app" })
}

/// A policy whose only listener is not bound to a tenant: connections must authenticate with SCRAM.
fn scram_policy(backend: &Backend, extra: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"main\"\nuri = \"{}\"\n\n\
         [[tenants]]\nid = \"t1\"\nbackend = \"main\"\nusers = [{{ name = \"app\", scram = \"{}\" }}]\n\n\
         [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n{extra}",
        backend.uri(),
        scram_entry("secret"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_frames_obey_the_message_limit_once_decompressed() {
    let backend = Backend::start();
    let proxy = start_proxy_with(&backend.uri(), "[limits]\nmax_message_bytes = 1048576\n").await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        // Under the limit, compressed or not: served.
        let mut client = RawClient::connect(addr);
        let small = compress_frame(&padded_insert(10_000), Compressor::Zlib).unwrap();
        assert_eq!(ok(&command(&mut client, &small)), 1.0);
        for compressor in Compressor::ALL {
            // About 2 MB once inflated, a few KB on the wire.
            let bomb = compress_frame(&padded_insert(2_000_000), compressor).unwrap();
            assert!(bomb.len() < 1_048_576 / 8, "{compressor:?}: {}", bomb.len());
            let mut client = RawClient::connect(addr);
            client.send(&bomb);
            assert!(client.is_closed(), "{compressor:?}: a frame inflating past the limit was accepted");
        }
        assert_still_serving(addr);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_get_the_small_message_cap() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&scram_policy(&backend, "")).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let hello = |pad: usize| msg(rawdoc! { "hello": 1, "client": { "pad": "x".repeat(pad) }, "$db": "admin" });
        // An ordinary handshake is far below 64 KiB.
        let mut client = RawClient::connect(addr);
        assert_eq!(ok(&command(&mut client, &hello(1_000))), 1.0);
        // 100 KB before authentication: refused, plain or compressed.
        let mut client = RawClient::connect(addr);
        client.send(&hello(100_000));
        assert!(client.is_closed(), "a 100 KB pre-authentication message was accepted");
        let mut client = RawClient::connect(addr);
        client.send(&compress_frame(&hello(100_000), Compressor::Zstd).unwrap());
        assert!(client.is_closed(), "a compressed 100 KB pre-authentication message was accepted");
        assert_still_serving(addr);
    })
    .await
    .unwrap();

    // A connection with a tenant has the full limit.
    let proxy = start_proxy_with(&backend.uri(), "").await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        assert_eq!(ok(&command(&mut client, &padded_insert(200_000))), 1.0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frame_timeout_bounds_a_trickled_message() {
    let backend = Backend::start();
    let proxy = start_proxy_with(&backend.uri(), "[limits]\nframe_timeout_secs = 1\n").await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let frame = padded_insert(1_000);
        let mut client = RawClient::connect(addr);
        client.stream.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
        let started = Instant::now();
        let mut closed_after = None;
        // One byte every 250 ms: every read is inside the 1 s timeout, the message never is.
        for byte in frame.iter().take(20) {
            client.send(&[*byte]);
            if client.is_closed() {
                closed_after = Some(started.elapsed());
                break;
            }
        }
        let closed_after = closed_after.expect("a trickling client kept its message open");
        assert!(closed_after < Duration::from_secs(3), "closed only after {closed_after:?}");
        assert_still_serving(addr);
    })
    .await
    .unwrap();
}

/// `find` on `app.items`, with `maxTimeMS` when given.
fn find(max_time_ms: Option<i32>) -> Vec<u8> {
    match max_time_ms {
        Some(ms) => msg(rawdoc! { "find": "items", "maxTimeMS": ms, "$db": "app" }),
        None => msg(rawdoc! { "find": "items", "$db": "app" }),
    }
}

fn code(reply: &RawDocumentBuf) -> i32 {
    reply.get_i32("code").unwrap_or_else(|_| panic!("no code in {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_backend_costs_a_timeout_error_not_a_hang() {
    let backend = Backend::start();
    let proxy = start_proxy_with(&backend.uri(), "[limits]\nbackend_timeout_ms = 500\n").await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut plain = RawClient::connect(addr);
        let mut timed = RawClient::connect(addr);
        for client in [&mut plain, &mut timed] {
            assert_eq!(ok(&command(client, &padded_insert(10))), 1.0);
        }
        backend.pause();
        let started = Instant::now();
        let reply = command(&mut plain, &find(None));
        assert_eq!((code(&reply), reply.get_str("codeName").unwrap()), (89, "NetworkTimeout"), "{reply:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        // The command's own maxTimeMS (plus a grace period) sets the deadline, and the error says so.
        let started = Instant::now();
        let reply = command(&mut timed, &find(Some(100)));
        assert_eq!((code(&reply), reply.get_str("codeName").unwrap()), (50, "MaxTimeMSExpired"), "{reply:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        backend.resume();
        // The late connection was discarded: the next command gets its own answer on a fresh one.
        for client in [&mut plain, &mut timed] {
            let reply = command(client, &find(None));
            assert_eq!(ok(&reply), 1.0, "{reply:?}");
            assert!(reply.get_document("cursor").is_ok(), "{reply:?}");
        }
    })
    .await
    .unwrap();
}

/// One connection keeps one timer for its commands' deadlines: a command due sooner than the one before it
/// still times out at its own deadline, and one due later is not cut short at the earlier one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_on_a_connection_gets_its_own_deadline() {
    let backend = Backend::start();
    let proxy = start_proxy_with(&backend.uri(), "[limits]\nbackend_timeout_ms = 500\n").await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        assert_eq!(ok(&command(&mut client, &padded_insert(10))), 1.0);
        // Answered, with a deadline 6 s out; then, with the backend stalled, a command due in 0.5 s.
        assert_eq!(ok(&command(&mut client, &find(Some(5_000)))), 1.0);
        backend.pause();
        let started = Instant::now();
        let reply = command(&mut client, &find(None));
        assert_eq!((code(&reply), reply.get_str("codeName").unwrap()), (89, "NetworkTimeout"), "{reply:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        backend.resume();
        assert_eq!(ok(&command(&mut client, &find(None))), 1.0);
        // Due in 0.5 s, answered; then a command due in 2.5 s, which the stalled backend never answers: it is
        // refused at its own deadline, not at the 0.5 s the connection's timer was last armed for.
        assert_eq!(ok(&command(&mut client, &find(None))), 1.0);
        backend.pause();
        let started = Instant::now();
        let reply = command(&mut client, &find(Some(1_500)));
        assert_eq!((code(&reply), reply.get_str("codeName").unwrap()), (50, "MaxTimeMSExpired"), "{reply:?}");
        assert!(started.elapsed() >= Duration::from_millis(2_400), "{:?}", started.elapsed());
        backend.resume();
        assert_eq!(ok(&command(&mut client, &find(None))), 1.0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backend_connections_survive_a_backend_restart() {
    let mut backend = Backend::start();
    let proxy = start_proxy(&backend.uri()).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut clients: Vec<RawClient> = (0..5).map(|_| RawClient::connect(addr)).collect();
        for client in &mut clients {
            assert_eq!(ok(&command(client, &padded_insert(10))), 1.0);
        }
        backend.restart();
        // Each client's backend connection died with the old process; none of them may lose its next command.
        for client in &mut clients {
            let reply = command(client, &find(None));
            assert_eq!(ok(&reply), 1.0, "{reply:?}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_for_the_global_buffer_budget() {
    let backend = Backend::start();
    let limits = "[limits]\nmax_message_bytes = 1048576\nmax_buffered_bytes = 1048576\n";
    let proxy = start_proxy_with(&backend.uri(), limits).await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let frame = padded_insert(900_000);
        // A holds a 900 KB message open: its bytes are paid for from the 1 MiB budget.
        let mut holder = RawClient::connect(addr);
        holder.send(&frame[..600_000]);
        std::thread::sleep(Duration::from_millis(300));
        // B's whole message does not fit next to A's: it waits instead of being buffered.
        let mut waiter = RawClient::connect(addr);
        waiter.stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        waiter.send(&frame);
        assert!(waiter.recv().is_none(), "a message was buffered past max_buffered_bytes");
        // A leaves; its bytes are released and B is served.
        drop(holder);
        waiter.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reply = waiter.recv().expect("the waiting message was never served");
        let Message::Msg(reply) = reply.message else { panic!("not OP_MSG") };
        assert_eq!(ok(&reply.body().to_owned()), 1.0);
        assert_still_serving(addr);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_write_timeout() {
    let backend = Backend::start();
    let proxy = start_proxy_with(&backend.uri(), "[limits]\nclient_write_timeout_secs = 1\n").await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        assert_eq!(ok(&command(&mut client, &padded_insert(2_000_000))), 1.0);
        // 30 replies of 2 MB each, far more than the socket buffers hold, and the client reads none of them.
        const REQUESTS: usize = 30;
        for _ in 0..REQUESTS {
            client.send(&find(None));
        }
        std::thread::sleep(Duration::from_secs(4));
        let mut replies = 0;
        while client.recv().is_some() {
            replies += 1;
        }
        assert!(replies < REQUESTS, "the proxy kept writing to a client that did not read");
        assert_still_serving(addr);
    })
    .await
    .unwrap();
}

/// A raw async client connected from a chosen loopback source address.
struct Raw {
    reader: tenantwall::codec::FrameReader<tokio::io::ReadHalf<tokio::net::TcpStream>>,
    writer: tokio::io::WriteHalf<tokio::net::TcpStream>,
    next_id: i32,
}

impl Raw {
    async fn connect_from(source: &str, addr: SocketAddr) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (r, w) = tokio::io::split(stream);
        Raw { reader: tenantwall::codec::FrameReader::new(r, 48_000_000, None), writer: w, next_id: 1 }
    }

    /// Sends a command; `None` when the proxy closed the connection instead of answering.
    async fn call(&mut self, body: RawDocumentBuf) -> Option<RawDocumentBuf> {
        use tokio::io::AsyncWriteExt;
        self.next_id += 1;
        let frame = OpMsg::new(MsgFlags::default(), body).encode(self.next_id, 0).unwrap();
        self.writer.write_all(&frame).await.ok()?;
        let frame = tokio::time::timeout(Duration::from_secs(10), self.reader.next_frame()).await.ok()?.ok()??;
        match tenantwall_protocol::decode(frame).unwrap().message {
            Message::Msg(m) => Some(m.body().to_owned()),
            _ => None,
        }
    }

    /// Runs SCRAM-SHA-256 as `user`; the final reply, or `None` if the proxy closed the connection.
    async fn scram(&mut self, user: &str, password: &str) -> Option<RawDocumentBuf> {
        use bson::spec::BinarySubtype::Generic;
        let (mut client, first) = tenantwall::auth::ScramClient::new(user, password).unwrap();
        let start = rawdoc! {
            "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bson::Binary { subtype: Generic, bytes: first },
            "options": { "skipEmptyExchange": true }, "$db": "admin",
        };
        let reply = self.call(start).await?;
        let Ok(payload) = reply.get_binary("payload") else { return Some(reply) };
        let last = client.handle_server_first(payload.bytes).unwrap();
        let next = rawdoc! {
            "saslContinue": 1, "conversationId": 1, "payload": bson::Binary { subtype: Generic, bytes: last }, "$db": "admin",
        };
        self.call(next).await
    }

    /// Writes pings back to back, never waiting for a reply (a task drains the replies), until the proxy closes
    /// the connection or `limit` passes. Returns how many were answered.
    async fn flood_pings_until_closed(self, limit: Duration) -> usize {
        use tokio::io::AsyncWriteExt;
        let Raw { mut reader, mut writer, mut next_id } = self;
        let drain = tokio::spawn(async move {
            let mut answered = 0;
            while let Ok(Ok(Some(_))) = tokio::time::timeout(limit, reader.next_frame()).await {
                answered += 1;
            }
            answered
        });
        let started = Instant::now();
        while started.elapsed() < limit {
            let mut pings = Vec::new();
            for _ in 0..16 {
                next_id += 1;
                let ping = OpMsg::new(MsgFlags::default(), rawdoc! { "ping": 1, "$db": "admin" });
                pings.extend_from_slice(&ping.encode(next_id, 0).unwrap());
            }
            match tokio::time::timeout(limit, writer.write_all(&pings)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        drain.await.unwrap()
    }

    /// Whether the proxy answers a ping on this connection (false: it closed it).
    async fn serves(&mut self) -> bool {
        self.call(rawdoc! { "ping": 1, "$db": "admin" }).await.is_some()
    }
}

/// A SCRAM policy with two users, `app` and `other`, and `limits` appended; the first listener needs SCRAM, the
/// second is bound to the tenant.
fn two_user_policy(backend: &Backend, limits: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"t1\"\n\n\
         [[backends]]\nname = \"main\"\nuri = \"{}\"\n\n\
         [[tenants]]\nid = \"t1\"\nbackend = \"main\"\nusers = [{{ name = \"app\", scram = \"{}\" }}, {{ name = \"other\", scram = \"{}\" }}]\n\n\
         [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n\n[limits]\n{limits}",
        backend.uri(),
        scram_entry("secret"),
        scram_entry("other-secret"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_have_their_own_cap() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&two_user_policy(&backend, "max_unauthenticated_connections = 5\n")).await;
    let (scram_addr, bound_addr) = (proxy.addrs()[0], proxy.addrs()[1]);
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut raw = Raw::connect_from("127.0.0.1", scram_addr).await;
        assert!(raw.serves().await);
        idle.push(raw);
    }
    // A sixth socket that has not authenticated is turned away...
    let mut sixth = Raw::connect_from("127.0.0.1", scram_addr).await;
    assert!(!sixth.serves().await, "a sixth unauthenticated connection was served");
    // ...but connections whose tenant is known are not counted, nor are those that authenticated.
    let mut bound = Raw::connect_from("127.0.0.1", bound_addr).await;
    assert!(bound.serves().await);
    let done = idle[0].scram("app", "secret").await.unwrap();
    assert!(done.get_bool("done").unwrap_or(false), "{done:?}");
    let mut next = Raw::connect_from("127.0.0.1", scram_addr).await;
    assert!(next.serves().await, "authenticating did not free its unauthenticated slot");
    assert!(proxy.stats().connections_refused.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_source_address_are_capped() {
    let backend = Backend::start();
    let proxy = start_proxy_with(&backend.uri(), "[limits]\nmax_connections_per_ip = 3\n").await;
    let addr = proxy.addr();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect_from("127.0.0.1", addr).await;
        assert!(raw.serves().await);
        open.push(raw);
    }
    let mut fourth = Raw::connect_from("127.0.0.1", addr).await;
    assert!(!fourth.serves().await, "a fourth connection from one source was served");
    // Another source is not affected, and a closed connection gives its slot back.
    let mut elsewhere = Raw::connect_from("127.0.0.2", addr).await;
    assert!(elsewhere.serves().await);
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Raw::connect_from("127.0.0.1", addr).await;
    assert!(again.serves().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_failures_are_slowed_then_refused_per_source_and_per_user() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&two_user_policy(&backend, "auth_failures_before_refusal = 6\n")).await;
    let addr = proxy.addrs()[0];
    let mut timings = Vec::new();
    for _ in 0..6 {
        let mut raw = Raw::connect_from("127.0.0.1", addr).await;
        let started = Instant::now();
        let reply = raw.scram("app", "wrong").await.unwrap();
        timings.push(started.elapsed());
        assert_eq!(code(&reply), 18, "{reply:?}");
    }
    // The first three failures cost nothing extra; later ones wait longer each time.
    assert!(timings[..3].iter().all(|t| *t < Duration::from_millis(150)), "{timings:?}");
    assert!(timings[3] >= Duration::from_millis(200) && timings[5] >= Duration::from_millis(800), "{timings:?}");
    // Now the source is refused, even with the right password, without running SCRAM...
    let mut raw = Raw::connect_from("127.0.0.1", addr).await;
    let reply = raw.call(rawdoc! { "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: b"n,,n=other,r=abcdefgh".to_vec() }, "$db": "admin" }).await.unwrap();
    assert_eq!(code(&reply), 18, "{reply:?}");
    assert!(reply.get_binary("payload").is_err(), "SCRAM ran for a refused source");
    // ...and so is the user, from anywhere; another user from another source is not affected.
    let mut raw = Raw::connect_from("127.0.0.2", addr).await;
    assert_eq!(code(&raw.scram("app", "secret").await.unwrap()), 18);
    let mut raw = Raw::connect_from("127.0.0.2", addr).await;
    let done = raw.scram("other", "other-secret").await.unwrap();
    assert!(done.get_bool("done").unwrap_or(false), "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_beyond_its_cursor_quota_loses_its_own_oldest_cursor() {
    let backend = Backend::start();
    let proxy = start_proxy_with(&backend.uri(), "[limits]\nmax_cursors_per_tenant = 2\n").await;
    let addr = proxy.addr();
    tokio::task::spawn_blocking(move || {
        let mut client = RawClient::connect(addr);
        let docs =
            rawdoc! { "insert": "many", "documents": [{ "n": 1 }, { "n": 2 }, { "n": 3 }, { "n": 4 }], "$db": "app" };
        assert_eq!(ok(&command(&mut client, &msg(docs))), 1.0);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let reply = command(&mut client, &msg(rawdoc! { "find": "many", "batchSize": 1, "$db": "app" }));
            let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
            assert_ne!(id, 0, "{reply:?}");
            ids.push(id);
        }
        let get_more = |id: i64| msg(rawdoc! { "getMore": id, "collection": "many", "batchSize": 1, "$db": "app" });
        let oldest = command(&mut client, &get_more(ids[0]));
        assert_eq!(code(&oldest), 43, "{oldest:?}");
        for id in &ids[1..] {
            let reply = command(&mut client, &get_more(*id));
            assert_eq!(ok(&reply), 1.0, "{reply:?}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_of_idle_sockets_does_not_keep_other_clients_from_authenticating() {
    let backend = Backend::start();
    let limits = "max_unauthenticated_connections = 10\nmax_unauthenticated_connections_per_ip = 3\n";
    let proxy = start_proxy_text(&two_user_policy(&backend, limits)).await;
    let addr = proxy.addrs()[0];
    let mut flood = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect_from("127.0.0.1", addr).await;
        assert!(raw.serves().await);
        flood.push(raw);
    }
    let mut fourth = Raw::connect_from("127.0.0.1", addr).await;
    assert!(!fourth.serves().await, "a fourth unauthenticated connection from one source was served");
    // A client elsewhere gets in and authenticates.
    let mut legit = Raw::connect_from("127.0.0.2", addr).await;
    let done = legit.scram("app", "secret").await.unwrap();
    assert!(done.get_bool("done").unwrap_or(false), "{done:?}");
    let reply = legit.call(rawdoc! { "find": "items", "$db": "app" }).await.unwrap();
    assert_eq!(ok(&reply), 1.0, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_breaking_the_protocol_before_authenticating_has_its_next_connections_held() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start();
    let proxy = start_proxy_text(&two_user_policy(&backend, "")).await;
    let (addr, bound_addr) = (proxy.addrs()[0], proxy.addrs()[1]);
    // Bombs refused from their first bytes, each on a new connection, as a flood reconnects: 7 violations. The
    // first three cost nothing; the connections after them are already held (0.2, 0.4, 0.8 and 1.6 s).
    let bomb = compress_frame(&padded_insert(2_000_000), Compressor::Zstd).unwrap();
    let bombing = Instant::now();
    for _ in 0..7 {
        let mut raw = Raw::connect_from("127.0.0.1", addr).await;
        let _ = raw.writer.write_all(&bomb).await;
        assert!(raw.reader.next_frame().await.ok().flatten().is_none(), "a bomb was answered");
    }
    assert!(bombing.elapsed() >= Duration::from_millis(3_000), "bombs held only {:?}", bombing.elapsed());
    // The source's next connection is held unread: a ping gets no answer for a while (3.2 s now)... The hold
    // starts when the proxy accepts, which can be before `connect` returns here: the clock starts before it.
    let started = Instant::now();
    let mut held = Raw::connect_from("127.0.0.1", addr).await;
    let ping = tokio::spawn(async move { held.call(rawdoc! { "ping": 1, "$db": "admin" }).await });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!ping.is_finished(), "a connection from the flooding source was served at once");
    // A listener bound to a tenant does not hold its connections, whatever their source...
    let mut bound = Raw::connect_from("127.0.0.1", bound_addr).await;
    assert!(bound.serves().await);
    assert!(!ping.is_finished(), "the held connection was served before its hold ended");
    // ...and another source is served, and authenticates.
    let mut other = Raw::connect_from("127.0.0.2", addr).await;
    let done = other.scram("app", "secret").await.unwrap();
    assert!(done.get_bool("done").unwrap_or(false), "{done:?}");
    // The hold ends and the connection is then served like any other.
    let reply = ping.await.unwrap().expect("the held connection was closed instead of served");
    assert_eq!(ok(&reply), 1.0, "{reply:?}");
    assert!(started.elapsed() >= Duration::from_millis(3_200), "held only {:?}", started.elapsed());
    // Four bombing connections and the ping's.
    assert_eq!(proxy.stats().connections_held.load(std::sync::atomic::Ordering::Relaxed), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_tenant_is_closed_at_the_auth_timeout_however_busy() {
    let backend = Backend::start();
    let proxy = start_proxy_text(&two_user_policy(&backend, "auth_timeout_secs = 1\n")).await;
    let (scram_addr, bound_addr) = (proxy.addrs()[0], proxy.addrs()[1]);
    // Before the busy client connects: its authentication clock starts at accept, after this.
    let started = Instant::now();
    let mut idle = Raw::connect_from("127.0.0.1", scram_addr).await;
    let busy = Raw::connect_from("127.0.0.1", scram_addr).await;
    let mut authenticated = Raw::connect_from("127.0.0.1", scram_addr).await;
    let done = authenticated.scram("app", "secret").await.unwrap();
    assert!(done.get_bool("done").unwrap_or(false), "{done:?}");
    let mut bound = Raw::connect_from("127.0.0.1", bound_addr).await;
    // A client that writes pings back to back always has a frame ready for the proxy to read: the deadline must still
    // win. Bounded so that a proxy which never closes fails the test instead of hanging it.
    let answered = busy.flood_pings_until_closed(Duration::from_secs(20)).await;
    assert!(started.elapsed() < Duration::from_secs(20), "a busy unauthenticated client outlived auth_timeout");
    assert!(answered > 0, "the busy client was never served");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before auth_timeout: {:?}", started.elapsed());
    assert!(!idle.serves().await, "an idle unauthenticated client outlived auth_timeout");
    // Connections with a tenant, by SCRAM or by their listener, are not subject to it.
    assert!(authenticated.serves().await, "an authenticated connection was closed at auth_timeout");
    assert!(bound.serves().await, "a tenant-bound connection was closed at auth_timeout");
}
