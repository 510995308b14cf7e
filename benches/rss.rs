//! Memory after a burst: the proxy's resident set before, at the peak of, and after a burst of large messages,
//! for the allocator it was built with: jemalloc (the default feature), mimalloc (`--no-default-features
//! --features mimalloc`) or the system allocator (`--no-default-features`).
//!
//! The proxy runs as its own process (the release binary) in front of the *fast stub backend* (see
//! `stub/mod.rs`); 40 clients of one tenant each send five 10 MB inserts at once, then disconnect. The resident
//! set is read from `/proc/<pid>/status`: `VmHWM` for the peak, `VmRSS` idle, 1 s and 10 s after the clients
//! left.
//!
//! Run: `cargo bench --bench rss`, `cargo bench --bench rss --no-default-features --features mimalloc`,
//! `cargo bench --bench rss --no-default-features` (release builds; about 15 s each once built).
//!
//! Results (2026-11-27, 2-core x86_64 VM shared with other builds; 40 clients × five 10 MB inserts):
//!
//! | allocator      | idle  | peak   | 1 s after | 10 s after |
//! |----------------|-------|--------|-----------|------------|
//! | system (glibc) | 6 MB  | 617 MB | 198 MB    | 198 MB     |
//! | mimalloc       | 18 MB | 648 MB | 598 MB    | 19 MB      |
//! | jemalloc       | 7 MB  | 581 MB | 9 MB      | 9 MB       |
//!
//! jemalloc returns the burst's memory within a second and idles as small as glibc, so it is the default; glibc
//! keeps a third of the peak for good (its heap and mmap thresholds grow with large frees), mimalloc returns it
//! only after several seconds.

mod stub;

use std::io::BufRead;
use std::time::Duration;

use bson::rawdoc;
use tenantwall::codec::FrameReader;
use tenantwall_protocol::{MsgFlags, OpMsg};
use tokio::io::AsyncWriteExt;

const CLIENTS: usize = 40;
const MESSAGES: usize = 5;
const MESSAGE_BYTES: usize = 10_000_000;

fn status_mb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn allocator() -> &'static str {
    if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else {
        "system (glibc)"
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let stub = stub::fast_stub_backend().await;
        let dir = std::env::temp_dir().join(format!("tenantwall-rss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\ntenant = \"acme\"\n[[backends]]\nname = \"stub\"\nuri = \"mongodb://{stub}/\"\n\
                 [[tenants]]\nid = \"acme\"\nbackend = \"stub\"\n[[rules]]\ndatabase = \"*\"\nmode = \"database\"\ntemplate = \"{{db}}\"\n"
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenantwall"))
            .args(["run", "--policy"])
            .arg(&policy)
            .env("RUST_LOG", "tenantwall=warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr: std::net::SocketAddr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
        let pid = child.id();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = status_mb(pid, "VmRSS:");

        let body = rawdoc! { "insert": "items", "documents": [{ "pad": "x".repeat(MESSAGE_BYTES) }], "$db": "app" };
        let frame = OpMsg::new(MsgFlags::default(), body).encode(1, 0).unwrap().freeze();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let frame = frame.clone();
            tasks.spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (read, mut write) = stream.into_split();
                let mut reader = FrameReader::new(read, 48_000_000, None);
                for _ in 0..MESSAGES {
                    write.write_all(&frame).await.unwrap();
                    reader.next_frame().await.unwrap().unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let peak = status_mb(pid, "VmHWM:");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after_1s = status_mb(pid, "VmRSS:");
        tokio::time::sleep(Duration::from_secs(9)).await;
        let after_10s = status_mb(pid, "VmRSS:");
        println!("| allocator | idle | peak | 1 s after | 10 s after |");
        println!("|---|---|---|---|---|");
        println!("| {} | {idle} MB | {peak} MB | {after_1s} MB | {after_10s} MB |", allocator());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    });
}
