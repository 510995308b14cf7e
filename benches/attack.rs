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
//! Results (2026-11-28, quiet 2-core x86_64 VM, load average 0.4–1.1; proxy CPU is the proxy threads' share of
//! one core; peak RSS includes the harness, e.g. the 45 MB document the bomb is made from and the attackers'
//! shared 48 MB message). The attackers connect from 127.0.0.2, another source than the victim, as another
//! machine would. Three runs with the attackers at nice 19 (the default), p50 / p99 per run:
//!
//! | limits             | attack         | victim p50 (3 runs)   | victim p99 (3 runs)         | attack volume  | proxy CPU | peak RSS |
//! |--------------------|----------------|-----------------------|-----------------------------|----------------|-----------|----------|
//! | default            | none           | 273 / 326 / 257 µs    | 479 / 536 / 478 µs          | -              | 3%        | 7 MB     |
//! | default            | zstd bombs     | 289 / 317 / 300 µs    | 459 / 1,889 / 441 µs        | 12–13 bombs    | 3%        | 121 MB   |
//! | default            | 48 MB messages | 300 / 308 / 295 µs    | 507 / 503 / 484 µs          | 157 MB sent    | 3–4%      | 82 MB    |
//! | pre-auth cap 48 MB | none           | 308 / 288 / 298 µs    | 1,893 / 461 / 467 µs        | -              | 3–4%      | 37 MB    |
//! | pre-auth cap 48 MB | zstd bombs     | 120 / 110 / 108 µs    | 358 / 231 / 229 µs          | 65–73 bombs    | 101%      | 152 MB   |
//! | pre-auth cap 48 MB | 48 MB messages | 321 / 274 / 289 µs    | 552 / 458 / 487 µs          | 167 MB sent    | 3%        | 96–139 MB |
//!
//! Two runs at equal priority (`TW_ATTACK_PRIORITY=equal`): with the defaults, bombs p99 501 / 497 µs and 48 MB
//! messages 506 / 455 µs against 429 / 504 µs with no attack; medians within 1.1×.
//!
//! Issue 14's goal (the victim's p50 and p99 during an attack within 2× of before) holds in every run but one
//! p99 (1,889 µs during bombs in the second run); the first run shows the same excursion with no attack at all
//! (1,893 µs), so it is the machine's, not the attack's. What changed: a source whose frames are refused before
//! it authenticates has its next connections held unread at accept (0.2 s, doubling, at most 5 s; see
//! `policies/README.md`). Before that, the attackers reconnected 18,000–22,000 times a second and accepting,
//! admitting and closing those connections took 77% of a core (victim p99 1.6–2.5 ms niced, up to 3.5 ms at
//! equal priority, against 470 µs); held, a few dozen attempts get through in 4 s and the proxy's CPU stays at
//! its idle 3%. With the pre-authentication cap raised to 48 MB, bombs are inflated (on the blocking pool, one
//! core) and answered as unauthorised commands, not refused frames, so they are not held: the victim's median
//! and tail stay where they were because the other core serves it. A flood from many addresses at once is not
//! held per address beyond the first three refusals of each; it is bounded by the per-address caps and the cost
//! of accepting.
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
