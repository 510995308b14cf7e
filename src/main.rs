//! The `tenantwall` command line: `run`, `check`, `explain`, `test`, `surface`, `passwd`, `audit`, `move`.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tenantwall::auth::ScramVerifier;
use tenantwall::{config, explain};
use tenantwall::{Policy, Reloader, Server};
use tracing_subscriber::EnvFilter;

// jemalloc by default: after a burst of large messages it gives the memory back within a second, where the
// system allocator kept 198 MB for good (benches/rss.rs). `--features mimalloc` or `--no-default-features`
// (the system allocator) for comparison.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "tenantwall", version, about = "MongoDB wire-protocol proxy that enforces multi-tenant isolation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve: authenticate clients to tenants and relay what the policy allows to their backends.
    /// SIGHUP (or a change of the file) reloads the policy. SIGTERM or SIGINT drains and exits 0; a second
    /// one exits at once.
    Run {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Listen on this address instead of the first listener's (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate a policy file: exit 0, or list every problem with its line and exit 1.
    Check {
        /// Policy file (TOML).
        file: PathBuf,
    },
    /// Show what the proxy would forward for a command (extended JSON), or why it would refuse it.
    Explain {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Tenant id the command runs as.
        #[arg(long)]
        tenant: String,
        /// Database for a command without `$db`.
        #[arg(long, default_value = "app")]
        db: String,
        /// The command, as extended JSON, e.g. '{"find": "orders", "filter": {"status": "open"}}'.
        command: String,
        /// A backend reply (extended JSON) to show as the client would receive it.
        #[arg(long)]
        reply: Option<String>,
    },
    /// Move one tenant's data to another placement (`field`, `collection` or `database`, optionally on another
    /// backend) while the running proxy holds only that tenant's commands: copy, verify, switch the policy, resume.
    /// Needs the proxy's `[admin]` listener with `token_env`.
    Move {
        /// Policy file (TOML) the proxy runs with; rewritten atomically at the switch.
        #[arg(long)]
        policy: PathBuf,
        /// Tenant id to move.
        #[arg(long)]
        tenant: String,
        /// Destination: MODE[:BACKEND], e.g. `database:east`.
        #[arg(long, value_parser = tenantwall::lifecycle::placement::Destination::parse)]
        to: tenantwall::lifecycle::placement::Destination,
        /// Longest the tenant may be held; the proxy ends the hold by itself after it, and a move that needs
        /// longer is abandoned before its switch.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
        max_hold_secs: u64,
        /// After the switch, remove the tenant's documents from where they were.
        #[arg(long)]
        delete_source: bool,
        /// The proxy's admin listener, when not the policy's `[admin] address`.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Run policy test cases (TOML files of tenant, command, expected outcome).
    Test {
        /// Test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the command surface: every command the proxy knows and every argument it accepts.
    Surface,
    /// Read every backend with the policy's service credentials and report isolation gaps in the data
    /// (unstamped or foreign documents, uncovered and orphan namespaces, indexes and options that span tenants)
    /// and each tenant's documents and sizes. Exit 0: no gap; 1: gaps found; 2: something could not be read.
    Audit {
        /// Policy file (TOML); backend secrets are read as `run` reads them.
        #[arg(long)]
        policy: PathBuf,
        /// Print the report as JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Documents per batch when scanning.
        #[arg(long, default_value_t = tenantwall::lifecycle::client::DEFAULT_BATCH_SIZE,
              value_parser = clap::value_parser!(i32).range(1..=100_000))]
        batch_size: i32,
        /// Seconds between progress lines of a long scan (on stderr); 0 reports every batch.
        #[arg(long, default_value_t = 5)]
        progress_secs: u64,
    },
    /// Read a password (stdin, or a prompt on a terminal) and print its SCRAM-SHA-256 entry for a policy.
    Passwd {
        /// PBKDF2 iterations (at least 4096).
        #[arg(long, default_value_t = 15_000)]
        iterations: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("tenantwall=info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Cmd::Run { policy, listen } => run(policy, listen),
        Cmd::Check { file } => check(&file),
        Cmd::Passwd { iterations } => passwd(iterations),
        Cmd::Explain { policy, tenant, db, command, reply } => {
            explain(&policy, &tenant, &db, &command, reply.as_deref())
        }
        Cmd::Test { files } => test(&files),
        Cmd::Audit { policy, json, batch_size, progress_secs } => audit(&policy, json, batch_size, progress_secs),
        Cmd::Move { policy, tenant, to, max_hold_secs, delete_source, admin } => {
            let options = tenantwall::lifecycle::mover::MoveOptions {
                policy,
                tenant,
                to,
                max_hold: Duration::from_secs(max_hold_secs),
                delete_source,
                admin,
            };
            move_tenant(&options)
        }
        Cmd::Surface => {
            print!("{}", tenantwall::command::spec::render_markdown());
            ExitCode::SUCCESS
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let (file, text) = match config::read(path) {
        Ok(parsed) => parsed,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let report = tenantwall::policy::compile::compile(&file, &text, path, tenantwall::policy::compile::Secrets::Skip);
    for warning in &report.warnings {
        println!("{}:{warning} (warning)", path.display());
    }
    for error in &report.errors {
        println!("{}:{error}", path.display());
    }
    if report.errors.is_empty() {
        println!("{}: ok ({} warning(s))", path.display(), report.warnings.len());
        ExitCode::SUCCESS
    } else {
        println!("{}: {} problem(s)", path.display(), report.errors.len());
        ExitCode::FAILURE
    }
}

fn explain(path: &Path, tenant: &str, db: &str, command: &str, reply: Option<&str>) -> ExitCode {
    let policy = match Policy::load_for_analysis(path) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("tenantwall: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = explain::parse_command(command).and_then(|doc| {
        let reply = reply.map(explain::parse_command).transpose()?;
        explain::explain_with_reply(&policy, tenant, doc, db, reply)
    });
    match outcome {
        Ok(outcome) => {
            println!("{}", explain::render(&outcome));
            match outcome {
                explain::Outcome::Denied { .. } => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("tenantwall: {e}");
            ExitCode::from(2)
        }
    }
}

fn audit(path: &Path, json: bool, batch_size: i32, progress_secs: u64) -> ExitCode {
    use tenantwall::lifecycle::audit;
    let policy = match Policy::load(path) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("tenantwall: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantwall: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = audit::Settings { batch_size, progress_every: Duration::from_secs(progress_secs) };
    let mut to_stderr = |line: &str| eprintln!("tenantwall audit: {line}");
    let mut progress = audit::Progress::new(&mut to_stderr, settings.progress_every);
    let report = runtime.block_on(audit::run(&policy, settings, &mut progress));
    let rendered = if json { audit::render::json(&report) + "\n" } else { audit::render::text(&report) };
    // A reader that stops early (`| head`) is not an error of the audit; its exit status still says what was found.
    let _ = std::io::stdout().lock().write_all(rendered.as_bytes());
    ExitCode::from(report.exit_code())
}

fn test(files: &[PathBuf]) -> ExitCode {
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        match explain::run_test_file(file) {
            Ok((ok, failures)) => {
                passed += ok;
                failed += failures.len();
                for failure in failures {
                    println!("FAIL {failure}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn move_tenant(options: &tenantwall::lifecycle::mover::MoveOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantwall: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut progress = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    match runtime.block_on(tenantwall::lifecycle::mover::run(options, &mut progress)) {
        Ok(report) if report.unchanged => ExitCode::SUCCESS,
        Ok(report) => {
            println!(
                "moved tenant {}: {} namespace(s), {} document(s); held for {} ms",
                options.tenant,
                report.namespaces,
                report.documents,
                report.held.map_or(0, |h| h.as_millis())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tenantwall: move of tenant {} failed: {e}", options.tenant);
            if !e.after_switch() {
                eprintln!("tenantwall: the tenant's source data and the policy are as they were");
            }
            ExitCode::FAILURE
        }
    }
}

fn passwd(iterations: u32) -> ExitCode {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprint!("password: ");
        let _ = std::io::stderr().flush();
        // Best effort: hide the typed password where stty exists.
        let _ = std::process::Command::new("stty").arg("-echo").stdin(std::process::Stdio::inherit()).status();
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if interactive {
        let _ = std::process::Command::new("stty").arg("echo").stdin(std::process::Stdio::inherit()).status();
        eprintln!();
    }
    if read.is_err() {
        eprintln!("tenantwall: cannot read the password");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("tenantwall: empty password");
        return ExitCode::FAILURE;
    }
    match ScramVerifier::generate(password, iterations) {
        Ok(verifier) => {
            println!("{verifier}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tenantwall: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf, listen: Option<SocketAddr>) -> ExitCode {
    let policy = match Policy::load(&path) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("tenantwall: {e}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit(policy.limits.max_connections);
    // The control runtime accepts, handles signals, the admin listener and health checks; connections are
    // served on the workers, one single-threaded runtime per core (`tenantwall::workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantwall: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(policy, listen).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("tenantwall: {e}");
                return ExitCode::FAILURE;
            }
        };
        let server = match server.start_workers(tenantwall::workers::default_count()) {
            Ok(server) => server,
            Err(e) => {
                eprintln!("tenantwall: cannot start worker threads: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Handlers are installed before the proxy says it listens: a signal sent as soon as a script has seen that
        // line must be handled, not take the process down with the default action.
        use tokio::signal::unix::{signal, SignalKind};
        let hangup = signal(SignalKind::hangup()).ok();
        let usr1 = signal(SignalKind::user_defined1()).ok();
        let stop = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?))).ok();
        {
            // Scripts and tests wait for this line to learn the (possibly ephemeral) port.
            let mut out = std::io::stdout().lock();
            for addr in server.local_addrs() {
                let _ = writeln!(out, "tenantwall: listening on {addr}");
            }
            if let Some(addr) = server.admin_addr() {
                let _ = writeln!(out, "tenantwall: admin listening on {addr}");
            }
            let _ = out.flush();
        }
        tokio::spawn(watch_policy(path, server.reloader(), hangup));
        tokio::spawn(reopen_audit_log(server.reloader(), usr1));
        server.run_until(shutdown_signal(stop)).await;
        ExitCode::SUCCESS
    })
}

/// Raises the open-file soft limit to the hard limit, and warns when even that cannot hold `max_connections`
/// clients (each needs its own socket and one to its backend, plus listeners and files).
fn raise_fd_limit(max_connections: usize) {
    let needed = u64::try_from(max_connections).unwrap_or(u64::MAX).saturating_mul(2).saturating_add(64);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            open_files = limit,
            needed,
            "the open-file limit cannot hold limits.max_connections; raise the hard limit (ulimit -Hn) or lower it"
        ),
        Ok(limit) => tracing::debug!(open_files = limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

/// How long the policy file must stay unchanged before the watcher applies it: an editor or a copy writing the
/// file in place passes through prefixes that may parse, and none of them may be applied.
const SETTLE: Duration = Duration::from_secs(2);
/// How often the watcher looks at the file.
const POLL: Duration = Duration::from_millis(500);

/// What the watcher has seen of the file: its contents are applied once they have stayed the same for
/// [`SETTLE`] and differ from what was last applied.
struct FileWatch {
    applied: Option<Vec<u8>>,
    seen: Option<(Vec<u8>, Instant)>,
}

impl FileWatch {
    fn new(applied: Option<Vec<u8>>) -> Self {
        Self { applied, seen: None }
    }

    /// Takes one observation of the contents; returns them when they are ready to apply.
    fn observe(&mut self, contents: Option<Vec<u8>>, now: Instant) -> Option<Vec<u8>> {
        let contents = contents?;
        if self.applied.as_ref() == Some(&contents) {
            self.seen = None;
            return None;
        }
        match &self.seen {
            Some((seen, since)) if *seen == contents => {
                if now.duration_since(*since) < SETTLE {
                    return None;
                }
                self.seen = None;
                self.applied = Some(contents.clone());
                Some(contents)
            }
            _ => {
                self.seen = Some((contents, now));
                None
            }
        }
    }

    /// Records contents applied by other means (SIGHUP).
    fn applied(&mut self, contents: Option<Vec<u8>>) {
        self.applied = contents;
        self.seen = None;
    }
}

/// Reloads on SIGHUP at once, and when the file's contents change and then stay unchanged for [`SETTLE`]
/// (polled: cheap and portable). Deploy with an atomic rename to make the change visible all at once.
async fn watch_policy(path: PathBuf, reloader: Reloader, mut hangup: Option<tokio::signal::unix::Signal>) {
    let read = |p: &Path| std::fs::read(p).ok();
    let mut watch = FileWatch::new(read(&path));
    let mut poll = tokio::time::interval(POLL);
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let text = tokio::select! {
            _ = signalled => {
                tracing::info!("SIGHUP: reloading policy");
                let contents = read(&path);
                watch.applied(contents.clone());
                contents
            }
            _ = poll.tick() => {
                match watch.observe(read(&path), Instant::now()) {
                    Some(contents) => {
                        tracing::info!(settle_secs = SETTLE.as_secs(), "policy file changed and settled: reloading");
                        Some(contents)
                    }
                    None => continue,
                }
            }
        };
        let loaded = match text.map(String::from_utf8) {
            Some(Ok(text)) => Policy::from_toml(&text, &path).map_err(|e| e.to_string()),
            Some(Err(_)) => Err(format!("{}: not UTF-8", path.display())),
            None => Err(format!("{}: cannot read", path.display())),
        };
        match loaded {
            Ok(policy) => reloader.apply(policy),
            Err(e) => {
                tracing::error!(error = %e, "new policy rejected; keeping the one in force");
                reloader.rejected();
            }
        }
    }
}

/// Reopens the audit log file on SIGUSR1, after an external tool rotated it.
async fn reopen_audit_log(reloader: Reloader, usr1: Option<tokio::signal::unix::Signal>) {
    let Some(mut usr1) = usr1 else { return };
    while usr1.recv().await.is_some() {
        tracing::info!("SIGUSR1: reopening the audit log");
        reloader.reopen_audit_log();
    }
}

/// Completes on the first SIGTERM or SIGINT, which starts the drain. A second one exits at once (status 1),
/// for an operator who does not want to wait for the grace period.
async fn shutdown_signal(streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>) {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let Some((mut term, mut int)) = streams else {
        tracing::warn!("cannot install signal handlers; stop the proxy with SIGKILL");
        return std::future::pending().await;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down; a second signal exits at once"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down; a second signal exits at once"),
        }
        let _ = first_tx.send(());
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting for commands in flight");
        std::process::exit(1);
    });
    let _ = first_rx.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watcher_applies_contents_only_once_they_settle() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut watch = FileWatch::new(Some(b"v1".to_vec()));
        assert_eq!(watch.observe(Some(b"v1".to_vec()), at(0)), None);
        // An in-place write passes through prefixes, each seen for less than the settle period.
        assert_eq!(watch.observe(Some(b"v".to_vec()), at(500)), None);
        assert_eq!(watch.observe(Some(b"v2-part".to_vec()), at(1000)), None);
        assert_eq!(watch.observe(Some(b"v2-part".to_vec()), at(2500)), None);
        assert_eq!(watch.observe(Some(b"v2-whole".to_vec()), at(3000)), None);
        assert_eq!(watch.observe(Some(b"v2-whole".to_vec()), at(4500)), None);
        assert_eq!(watch.observe(Some(b"v2-whole".to_vec()), at(5000)), Some(b"v2-whole".to_vec()));
        assert_eq!(watch.observe(Some(b"v2-whole".to_vec()), at(9000)), None, "applied twice");
        // A missing file is not a change.
        assert_eq!(watch.observe(None, at(9500)), None);
        // Changing back to what is applied cancels a pending change.
        assert_eq!(watch.observe(Some(b"v3".to_vec()), at(10_000)), None);
        assert_eq!(watch.observe(Some(b"v2-whole".to_vec()), at(10_500)), None);
        assert_eq!(watch.observe(Some(b"v2-whole".to_vec()), at(13_000)), None);
    }
}
