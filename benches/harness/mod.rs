//! Shared by the load harnesses (`load.rs`, `load_ci.rs`): the proxy as its own process (the release binary the
//! bench was built with, so its resident set and its sockets are its own), the proxy's `/metrics`, established
//! connections read from `/proc/net/tcp`, the open-file limit, HAProxy, and latency summaries.
#![allow(dead_code)]

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tenantwall process started from a policy file; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ProxyProcess {
    child: Child,
    /// Client listeners, in policy order.
    pub addrs: Vec<SocketAddr>,
    /// The admin listener, when the policy has `[admin]`.
    pub admin: Option<SocketAddr>,
}

impl ProxyProcess {
    /// Starts `tenantwall run --policy <policy>` and waits for its "listening on" lines.
    pub fn start(policy: &Path) -> ProxyProcess {
        // TW_PROXY_WORKERS sets the proxy's worker threads alone (it reads TOKIO_WORKER_THREADS), to compare
        // runtime shapes without changing the load generator's; TW_PROXY_EXE runs another build (copied aside
        // before a change) in any mode, for a before/after run.
        let exe = std::env::var_os("TW_PROXY_EXE")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tenantwall")), PathBuf::from);
        Self::start_with(policy, &exe, std::env::var("TW_PROXY_WORKERS").ok())
    }

    /// [`ProxyProcess::start`] with another tenantwall executable (an A/B comparison of two builds) and, when
    /// given, that many async worker threads.
    pub fn start_with(policy: &Path, exe: &Path, workers: Option<String>) -> ProxyProcess {
        let mut child = Command::new(exe)
            .args(["run", "--policy"])
            .arg(policy)
            // Warnings (the open-file limit, policy hints) would interleave with the tables; errors still show.
            .env("RUST_LOG", "tenantwall=error")
            .env_remove("TOKIO_WORKER_THREADS")
            .envs(workers.map(|n| ("TOKIO_WORKER_THREADS", n)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tenantwall");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // The proxy prints its addresses, then nothing more on stdout; a thread reads them so a proxy that fails
        // to start (and prints nothing) ends in a clear panic instead of a hang.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (mut addrs, mut admin) = (Vec::new(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let addr = line.rsplit(' ').next().and_then(|a| a.parse::<SocketAddr>().ok());
            match (line.starts_with("tenantwall: admin listening on "), addr) {
                (true, Some(addr)) => admin = Some(addr),
                (false, Some(addr)) => addrs.push(addr),
                _ => {}
            }
            // The admin line, when there is one, is printed last.
            let wants_admin = std::fs::read_to_string(policy).map(|p| p.contains("[admin]")).unwrap_or(false);
            if !addrs.is_empty() && (admin.is_some() || !wants_admin) {
                break;
            }
        }
        assert!(!addrs.is_empty(), "tenantwall did not start with {}", policy.display());
        ProxyProcess { child, addrs, admin }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        status_kib(self.pid(), "VmRSS:") as f64 / 1024.0
    }

    /// Peak resident set so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_kib(self.pid(), "VmHWM:") as f64 / 1024.0
    }

    /// Sum of every sample of `metric` on the admin listener's `/metrics`; `None` when there is no admin
    /// listener or the proxy does not export the metric (yet).
    pub fn metric(&self, metric: &str) -> Option<f64> {
        let text = http_get(self.admin?, "/metrics")?;
        let mut found = None;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(metric) else { continue };
            // `name{labels} value` or `name value`, but not another metric that starts with the same name.
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                continue;
            }
            if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }
}

/// How long a dropped proxy may take to drain and exit after SIGTERM before it is killed. Shorter than the
/// proxy's own grace for commands in flight (`limits.shutdown_grace_secs`, 30 s by default): the harnesses drop
/// a proxy once their clients are done, when it has nothing to drain; one still busy is killed and writes no
/// profile.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Drop for ProxyProcess {
    /// Stops the proxy as an operator does (SIGTERM: drain, then exit 0), so that it runs its exit path: a
    /// profile-instrumented build (`scripts/build-pgo`) writes its profile there. Killed when it has not exited
    /// within [`STOP_GRACE`] or the signal cannot be sent (the `kill` program, from procps, is missing). The
    /// child is not reaped before, so its pid cannot have been reused.
    fn drop(&mut self) {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + STOP_GRACE;
        while signalled && Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                _ => return,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time process `pid` has spent so far, all its threads, user and system (the scheduler's nanosecond
/// counts in `/proc/<pid>/task/*/schedstat`); zero when it cannot be read.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(nanos)
}

/// User-mode CPU time process `pid` has spent so far, all its threads (`utime` in `/proc/<pid>/stat`, in the
/// kernel's 10 ms ticks: good to about a percent over a window of a second or more at a busy relay); zero when
/// it cannot be read. The rest of [`cpu_time`] is the kernel's time on the process's behalf (its syscalls).
pub fn user_time(pid: u32) -> Duration {
    // `/proc/<pid>/stat` reports in USER_HZ, which Linux fixes at 100 whatever the kernel's own tick rate.
    const TICK: Duration = Duration::from_millis(10);
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Duration::ZERO };
    // After the command name (in parentheses, which may hold spaces): state, then the numbered fields; utime is
    // the 14th field of the line, the 12th after the name.
    let ticks = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(11)?.parse::<u32>().ok());
    ticks.map_or(Duration::ZERO, |t| TICK * t)
}

/// The whole machine's CPU time so far, in the kernel's 10 ms ticks summed over its cores, from the first line
/// of `/proc/stat`: (idle, including waiting for I/O; stolen by the hypervisor from this VM; all of it). Zeros
/// when it cannot be read.
pub fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else { return (0, 0, 0) };
    // user nice system idle iowait irq softirq steal (guest time is already counted in user).
    let fields: Vec<u64> = cpu.split_whitespace().take(8).filter_map(|f| f.parse().ok()).collect();
    if fields.len() < 8 {
        return (0, 0, 0);
    }
    (fields[3] + fields[4], fields[7], fields.iter().sum())
}

/// Context switches of process `pid` so far, all its threads: (voluntary, involuntary), from
/// `/proc/<pid>/task/*/status`. A voluntary one is a thread going to sleep (waiting for I/O or a lock), an
/// involuntary one a thread preempted while it could still run.
pub fn context_switches(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return (0, 0) };
    let mut counts = (0, 0);
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        counts.0 += field("voluntary_ctxt_switches:");
        counts.1 += field("nonvoluntary_ctxt_switches:");
    }
    counts
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

/// The body of `GET path` from a one-request-per-connection HTTP/1.1 server, or `None` on any failure.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Established TCP connections whose remote port is `port`: the connections other processes of this machine
/// hold to a server listening on it (its own accepted sockets have it as their local port instead).
pub fn established_to(port: u16) -> usize {
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else { continue };
            let remote_port = remote.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 01 is TCP_ESTABLISHED.
            if remote_port == Some(port) && *state == "01" {
                count += 1;
            }
        }
    }
    count
}

/// Raises this process's open-file limit to at least `want` (children, the proxy among them, inherit it). As
/// root the hard limit can be raised too; otherwise the soft limit goes up to the hard one. Returns the soft
/// limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    if soft >= want {
        return soft;
    }
    if hard < want && rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_ok() {
        return want;
    }
    rlimit::increase_nofile_limit(want).unwrap_or(soft)
}

/// A temporary directory for policy and configuration files, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tenantwall-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound and released: a tiny race, acceptable for a benchmark).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Waits until `addr` accepts TCP connections; false after `timeout`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Where the `haproxy` executable is, installing the Debian package when it is missing and this process is root
/// with a working apt; `Err` says why there is none.
pub fn find_or_install_haproxy() -> Result<PathBuf, String> {
    let find = || {
        let path = std::env::var("PATH").unwrap_or_default();
        // /usr/sbin is where the Debian package puts it, and not on every user's PATH.
        let found = path
            .split(':')
            .chain(["/usr/sbin", "/usr/local/sbin"])
            .map(|dir| Path::new(dir).join("haproxy"))
            .find(|p| p.is_file());
        found
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.ok().as_deref() != Some("0") {
        return Err("haproxy is not installed and this is not root: `apt-get install haproxy` to add it".into());
    }
    let apt = |args: &[&str]| {
        eprintln!("load: running apt-get {}", args.join(" "));
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    // A fresh machine's package lists may be missing or stale: update once, only when the first attempt fails.
    let installed = apt(&["install", "-y", "-q", "haproxy"])
        || (apt(&["update", "-q"]) && apt(&["install", "-y", "-q", "haproxy"]));
    if !installed {
        return Err("haproxy is not installed and `apt-get install -y haproxy` failed".into());
    }
    find().ok_or_else(|| "the haproxy package installed no haproxy executable".into())
}

/// HAProxy in TCP mode relaying one loopback port to `backend`; killed when dropped.
pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
    _dir: Scratch,
}

impl Haproxy {
    pub fn start(exe: &Path, backend: SocketAddr) -> Result<Haproxy, String> {
        let dir = Scratch::new("haproxy");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        // A plain layer-4 relay: no health checks, no logging, generous timeouts, and as many threads as the
        // machine has cores (HAProxy's default, as tenantwall's runtime). maxconn stays small because HAProxy
        // refuses to start when the open-file limit cannot hold twice as many sockets.
        let config = dir.write(
            "haproxy.cfg",
            &format!(
                "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 5m\n  \
                 timeout server 5m\n\nfrontend bench\n  bind {addr}\n  default_backend stub\n\nbackend stub\n  \
                 server s1 {backend}\n"
            ),
        );
        let child = Command::new(exe)
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("haproxy.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        let log = dir.0.join("haproxy.log");
        let mut haproxy = Haproxy { child, addr, _dir: dir };
        if !wait_listening(addr, Duration::from_secs(10)) {
            let _ = haproxy.child.kill();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{} did not start listening on {addr}: {}", exe.display(), log.trim()));
        }
        Ok(haproxy)
    }
}

impl Haproxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sorted latencies of one measurement.
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn new(mut all: Vec<Duration>) -> Latencies {
        all.sort_unstable();
        Latencies(all)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile (0.5 = median); zero when nothing was measured.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0[((self.0.len() as f64 * q) as usize).min(self.0.len() - 1)]
    }

    pub fn p50_us(&self) -> f64 {
        self.quantile(0.50).as_secs_f64() * 1e6
    }

    pub fn p99_us(&self) -> f64 {
        self.quantile(0.99).as_secs_f64() * 1e6
    }
}
