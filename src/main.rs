//! The `tenantwall` command line.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenantwall::{Policy, Server};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "tenantwall", version, about = "MongoDB wire-protocol proxy that enforces multi-tenant isolation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve: listen for MongoDB clients and relay them to the policy's backend.
    Run {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Listen on this address instead of the policy's listeners (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
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
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
        {
            // Scripts and tests wait for this line to learn the (possibly ephemeral) port.
            let mut out = std::io::stdout().lock();
            for addr in server.local_addrs() {
                let _ = writeln!(out, "tenantwall: listening on {addr}");
            }
            let _ = out.flush();
        }
        server.run_until(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
