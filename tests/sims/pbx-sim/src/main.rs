//! `usersync-pbx-sim`: runs the PBX API simulator on a TCP address.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(about = "Simulator of the hosted PBX user API")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// Bearer token accepted for every company without its own token.
    #[arg(long, env = "PBX_SIM_TOKEN", default_value = "pbx-sim-token")]
    token: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    announce(listener.local_addr()?)?;
    usersync_pbx_sim::serve(listener, args.token, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The one stdout line a parent process waits for to learn the address.
fn announce(addr: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}")?;
    stdout.flush()
}

async fn shutdown_signal() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "cannot wait for Ctrl-C; running until killed");
        std::future::pending::<()>().await;
    }
}
