//! Attack harness: another tenant's latency before and during the two CPU/memory attacks of issue 14.
//!
//! One in-process tenantwall (its own 2-worker runtime) sits in front of the load harness's *fast stub backend*
//! (a hand-written stand-in that answers every OP_MSG at once, so only the proxy's cost shows). A victim tenant
//! on a listener bound to it runs `find` round trips; meanwhile, unauthenticated attackers on a SCRAM listener
//! send either zstd bombs (about 2 KB on the wire, 47 MB once inflated; 4 connections, each sending its next
//! bomb as soon as the last one was answered or refused, reconnecting when closed) or 48 MB messages (40
//! connections at 21 MB/s each, reconnecting when closed: the 850 MB/s of the original exercise). Each attack runs with the default limits and again with the pre-authentication cap raised to
//! 48 MB (`max_unauthenticated_message_bytes`), which leaves the budget, the frame timeout and the off-worker
//! decoding to do the work alone. The victim (with the stub), the attackers and the proxy each have their own
//! 2-thread runtime; all share the machine's cores. Peak RSS is the process's (proxy, victim, attackers and their shared 48 MB
//! buffer), reset before each phase.
//!
//! Run: `cargo bench --bench attack` (release build; about 30 s).
//!
//! Results (2026-11-27, after the backend pool, 2-core x86_64 VM, load average 1.1–1.3; proxy CPU is the proxy
//! threads' share of one core; peak RSS includes the harness, e.g. the 45 MB document the bomb is made from and the
//! attackers' shared 48 MB message). Attackers at nice 19 (the default):
//!
//! | limits             | attack         | victim p50 | victim p99 | attack volume     | proxy CPU | peak RSS |
//! |--------------------|----------------|------------|------------|-------------------|-----------|----------|
//! | default            | none           | 284 µs     | 470 µs     | -                 | 3%        | 6 MB     |
//! | default            | zstd bombs     | 217 µs     | 1,582 µs   | 73,208 bombs      | 77%       | 121 MB   |
//! | default            | 48 MB messages | 197 µs     | 2,490 µs   | 3,586 MB sent     | 22%       | 83 MB    |
//! | pre-auth cap 48 MB | none           | 268 µs     | 436 µs     | -                 | 3%        | 38 MB    |
//!
//! The same minute with attackers at equal priority (`TW_ATTACK_PRIORITY=equal`):
//!
//! | limits             | attack         | victim p50 | victim p99 | attack volume     | proxy CPU | peak RSS |
//! |--------------------|----------------|------------|------------|-------------------|-----------|----------|
//! | default            | none           | 301 µs     | 516 µs     | -                 | 3%        | 6 MB     |
//! | default            | zstd bombs     | 270 µs     | 3,450 µs   | 90,083 bombs      | 77%       | 121 MB   |
//! | default            | 48 MB messages | 242 µs     | 1,720 µs   | 3,582 MB sent     | 19%       | 82 MB    |
//! | pre-auth cap 48 MB | none           | 278 µs     | 497 µs     | -                 | 3%        | 37 MB    |
//! | pre-auth cap 48 MB | zstd bombs     | 121 µs     | 316 µs     | 67 bombs inflated | 102%      | 180 MB   |
//! | pre-auth cap 48 MB | 48 MB messages | 291 µs     | 44,060 µs  | 2,495 MB sent     | 53%       | 644 MB   |
//!
//! The victim's median stays within 2× in every case; its p99 does not (3–7× with the defaults): the attackers
//! open 18,000–22,000 connections a second, each refused from its first bytes, and accepting, admitting and closing
//! them is the proxy CPU shown. A per-source rate of new connections would take that churn off; it is not built.
//! One earlier run with niced attackers had a baseline p99 of 3 ms (the same phases within it): the tails of a
//! 4-second phase on a shared 2-core machine move by several times from run to run.
//!
//! Before issue 14 the load exercise measured the victim's p50 going from 0.45 ms to 270 ms under four bombing
//! connections, and 1.88 GB resident after 2.2 s of 48 MB messages. With the defaults a bomb is refused from its
//! 9-byte prefix and a 48 MB message from its header, so the victim's median stays within 2× while 20,000 bombs
//! a second arrive; the tail grows with the connection churn. With the cap raised, inflating a bomb pins one
//! core on the blocking pool (never both: the other keeps the victim's median where it was), and 48 MB messages
//! are held to the 512 MiB budget; the tail then suffers from the proxy copying 600 MB/s off the sockets.
//! Runs on this shared machine vary by 2-3× in the tails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::rawdoc;
use bytes::Bytes;
use tenantwall::codec::FrameReader;
use tenantwall::{Policy, Server};
use tenantwall_protocol::compression::compress_frame;
use tenantwall_protocol::{Compressor, MsgFlags, OpMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod stub;

use stub::fast_stub_backend;

const PHASE: Duration = Duration::from_secs(4);
/// Name of the proxy runtime's threads (workers and blocking pool), to tell its CPU time from the clients'.
const PROXY_THREADS: &str = "tw-proxy";

/// CPU seconds used so far by the proxy's threads (from /proc/self/task/*/stat; Linux, 100 ticks a second).
fn proxy_cpu_secs() -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        if !head.ends_with(PROXY_THREADS) {
            continue;
        }
        // After the command name: state is field 3, utime and stime are fields 14 and 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / 100.0
}

/// Gives the attackers' threads the lowest CPU priority (`renice 19` on each thread id; Linux nice values are per
/// thread). Attackers run on other machines in real life: on this one, at equal priority, generating the attack
/// takes CPU from everything else, the victim's client included, and the victim's numbers would measure the
/// load generator as much as the proxy. `TW_ATTACK_PRIORITY=equal` leaves them at the default priority.
fn lower_attacker_priority() -> &'static str {
    if std::env::var("TW_ATTACK_PRIORITY").is_ok_and(|v| v == "equal") {
        return "equal";
    }
    let mut reniced = 0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else { continue };
        if comm.trim() != "attacker" {
            continue;
        }
        let tid = task.file_name().to_string_lossy().into_owned();
        let done = std::process::Command::new("renice")
            .args(["-n", "19", "-p", &tid])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        reniced += usize::from(done);
    }
    if reniced == 0 {
        "equal (renice failed)"
    } else {
        "nice 19"
    }
}

/// Starts the proxy on its own runtime; returns (victim listener, attacker listener).
fn start_proxy(backend: SocketAddr, limits: &str) -> (SocketAddr, SocketAddr) {
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"victim\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [[backends]]\nname = \"stub\"\nuri = \"mongodb://{backend}/\"\n\
         [[tenants]]\nid = \"victim\"\nbackend = \"stub\"\n\
         [[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n[limits]\n{limits}"
    );
    let policy = Policy::from_toml(&text, std::path::Path::new("attack.toml")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(PROXY_THREADS)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let handle = Server::bind(policy, None).await.unwrap().spawn();
            tx.send((handle.addrs()[0], handle.addrs()[1])).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

/// The victim's find round trips for `duration`; (p50, p99, count).
async fn victim(addr: SocketAddr, duration: Duration) -> (Duration, Duration, usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read, 48_000_000, None);
    let mut latencies = Vec::new();
    let until = Instant::now() + duration;
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        let frame = OpMsg::new(MsgFlags::default(), rawdoc! { "find": "items", "limit": 1, "$db": "app" })
            .encode(i, 0)
            .unwrap();
        let sent = Instant::now();
        write.write_all(&frame).await.unwrap();
        reader.next_frame().await.unwrap().unwrap();
        latencies.push(sent.elapsed());
        // A steady, light load: about 500 commands a second.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (pick(0.50), pick(0.99), latencies.len())
}

/// Where the attackers connect from: another address than the victim's, as another machine would.
const ATTACKER_SOURCE: &str = "127.0.0.2:0";

/// An attacker's connection, from [`ATTACKER_SOURCE`].
async fn connect_attacker(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(ATTACKER_SOURCE.parse().map_err(std::io::Error::other)?)?;
    socket.connect(addr).await
}

/// A zstd bomb: about 2 KB on the wire, 47 MB once inflated.
fn zstd_bomb() -> Bytes {
    let body = rawdoc! { "insert": "items", "documents": [{ "pad": "x".repeat(15_000_000) }, { "pad": "y".repeat(15_000_000) }, { "pad": "z".repeat(15_000_000) }], "$db": "app" };
    let frame = OpMsg::new(MsgFlags::default(), body).encode(1, 0).unwrap();
    compress_frame(&frame, Compressor::Zstd).unwrap().freeze()
}

/// Attackers sending bombs in a loop (reconnecting when closed); counts what they sent.
async fn bombers(addr: SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let bomb = zstd_bomb();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (bomb, stop, sent) = (bomb.clone(), stop.clone(), sent.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = connect_attacker(addr).await else { continue };
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if stream.write_all(&bomb).await.is_err() {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    // Wait for the answer (or the close) before the next bomb.
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => break,
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Bytes per second each flooding attacker sends: 40 of them make the 850 MB/s the load exercise reached
/// (1.88 GB in 2.2 s). Unthrottled, the attackers' own loopback copies would take the cores from everyone.
const FLOOD_RATE: f64 = 21_000_000.0;

/// 40 attackers each sending 48 MB messages in a loop; counts the bytes they got onto the wire.
async fn floods(addr: SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let mut message = vec![b'x'; 48_000_000];
    message[..4].copy_from_slice(&48_000_000i32.to_le_bytes());
    message[12..16].copy_from_slice(&2013i32.to_le_bytes());
    let message = Bytes::from(message);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (message, stop, sent) = (message.clone(), stop.clone(), sent.clone());
        tasks.spawn(async move {
            let started = Instant::now();
            let mut mine = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = connect_attacker(addr).await else { continue };
                for chunk in message.chunks(256 * 1024) {
                    let due = started + Duration::from_secs_f64(mine as f64 / FLOOD_RATE);
                    tokio::time::sleep_until(due.into()).await;
                    if stop.load(Ordering::Relaxed) || stream.write_all(chunk).await.is_err() {
                        break;
                    }
                    mine += chunk.len() as u64;
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The attackers get threads of their own, so the victim's client is delayed only by the proxy and the OS.
    let attackers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("attacker")
        .enable_all()
        .build()
        .unwrap();
    let attack_on = attackers_rt.handle().clone();
    // The workers exist once the runtime is built; let them start before looking for them.
    std::thread::sleep(Duration::from_millis(100));
    let priority = lower_attacker_priority();
    runtime.block_on(async {
        let stub = fast_stub_backend().await;
        println!("attackers' CPU priority: {priority}");
        println!(
            "| limits | attack | victim p50 | victim p99 | victim commands | attack volume | proxy CPU | peak RSS |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (label, limits) in
            [("default", ""), ("pre-auth cap 48 MB", "max_unauthenticated_message_bytes = 48000000\n")]
        {
            let (victim_addr, attacker_addr) = start_proxy(stub, limits);
            let _warm = victim(victim_addr, Duration::from_millis(500)).await;
            reset_peak_rss();
            let cpu = proxy_cpu_secs();
            let (p50, p99, n) = victim(victim_addr, PHASE).await;
            let cpu = (proxy_cpu_secs() - cpu) / PHASE.as_secs_f64() * 100.0;
            println!(
                "| {label} | none | {} µs | {} µs | {n} | - | {cpu:.0}% | {} MB |",
                p50.as_micros(),
                p99.as_micros(),
                peak_rss_mb()
            );
            for attack in ["zstd bombs", "48 MB messages"] {
                let stop = Arc::new(AtomicBool::new(false));
                let sent = Arc::new(AtomicU64::new(0));
                reset_peak_rss();
                let attackers = match attack {
                    "zstd bombs" => attack_on.spawn(bombers(attacker_addr, stop.clone(), sent.clone())),
                    _ => attack_on.spawn(floods(attacker_addr, stop.clone(), sent.clone())),
                };
                tokio::time::sleep(Duration::from_millis(300)).await;
                let cpu = proxy_cpu_secs();
                let (p50, p99, n) = victim(victim_addr, PHASE).await;
                let cpu = (proxy_cpu_secs() - cpu) / PHASE.as_secs_f64() * 100.0;
                stop.store(true, Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_secs(10), attackers).await;
                let volume = match attack {
                    "zstd bombs" => format!("{} bombs", sent.load(Ordering::Relaxed)),
                    _ => format!("{} MB sent", sent.load(Ordering::Relaxed) / 1_000_000),
                };
                println!(
                    "| {label} | {attack} | {} µs | {} µs | {n} | {volume} | {cpu:.0}% | {} MB |",
                    p50.as_micros(),
                    p99.as_micros(),
                    peak_rss_mb()
                );
            }
        }
    });
    attackers_rt.shutdown_background();
}
