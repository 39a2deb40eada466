//! Simulator of Microsoft Graph and Entra ID for usersync's end-to-end tests,
//! demo and benchmarks. One server answers the token endpoint, the Graph
//! endpoints under `/v1.0` (directory reads, and change-notification
//! subscriptions that call the subscriber back) and a control API under
//! `/_sim`; all state lives in memory, keyed by tenant id. README.md lists
//! the endpoints.

mod connection;
mod control;
mod directory;
mod entra;
mod errors;
mod faults;
mod groups;
mod groups_delta;
mod odata;
mod rounds;
mod seed;
mod server;
mod subscriptions;
mod sync_token;
mod tenant;
mod user_view;
mod users_delta;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(about = "Microsoft Graph and Entra ID simulator for usersync tests")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Origin used in generated nextLink/deltaLink URLs (default: the bound address).
    #[arg(long)]
    base_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let base_url = args.base_url.unwrap_or_else(|| format!("http://{address}"));
    announce(address)?;
    server::serve(listener, server::Sim::new(&base_url))
        .await
        .context("server failed")
}

/// Tells the parent process where we listen: exactly one line on stdout.
fn announce(address: SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{address}")?;
    stdout.flush()?;
    Ok(())
}
