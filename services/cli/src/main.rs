//! usersync: the operator's command line.

mod fields;
mod output;

use std::io::Read;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use usersync_bus::Bus;
use usersync_contract::ResyncRequest;
use usersync_core::parse_tenant_file;
use usersync_runtime::{amqp_url, database_url};
use usersync_store::{SecretKey, Store};

#[derive(Parser)]
#[command(
    name = "usersync",
    version,
    about = "Operate usersync: tenants, resyncs and status"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, update, list and show tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Ask for a sync now (publishes a resync request to the broker).
    Resync {
        /// Tenant id.
        id: String,
        /// Drop the delta state first and read the whole directory.
        #[arg(long)]
        full: bool,
    },
    /// Mode, last successful sync, last run and next scheduled run, per tenant.
    Status {
        /// Only this tenant.
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The history of a tenant's sync runs.
    Runs {
        id: String,
        #[arg(long)]
        json: bool,
        /// How many runs to show, newest first.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Source properties seen in the tenant's directory: users having each, an example.
    Fields {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create or update a tenant from a JSON file (`-` reads standard input).
    Apply { file: String },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant, secrets masked.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() {
    if let Err(err) = run(Cli::parse()).await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Tenant {
            command: TenantCommand::Apply { file },
        } => apply(&file).await,
        Command::Tenant {
            command: TenantCommand::List { json },
        } => output::tenant_list(&store().await?.tenants().await?, json),
        Command::Tenant {
            command: TenantCommand::Show { id, json },
        } => {
            let tenant = store().await?.require_tenant(&id, None).await?;
            output::tenant_show(&tenant.config, json)
        }
        Command::Resync { id, full } => resync(&id, full).await,
        Command::Status { id, json } => {
            let store = store().await?;
            let mut tenants = store.tenants().await?;
            if let Some(id) = &id {
                tenants.retain(|t| &t.config.id == id);
                if tenants.is_empty() {
                    bail!("no tenant {id:?}: create it with `usersync tenant apply FILE`");
                }
            }
            let mut lines = Vec::with_capacity(tenants.len());
            for tenant in tenants {
                let last_run = store.runs(&tenant.config.id, 1).await?.into_iter().next();
                lines.push(output::StatusLine::new(tenant, last_run, chrono::Utc::now()));
            }
            output::status(&lines, json)
        }
        Command::Runs { id, json, limit } => {
            let store = store().await?;
            store.require_tenant(&id, None).await?;
            output::runs(&store.runs(&id, limit).await?, json)
        }
        Command::Fields { id, json } => fields::show(&store().await?, &id, json).await,
    }
}

async fn store() -> anyhow::Result<Store> {
    Store::connect(&database_url(), 2).await
}

async fn apply(file: &str) -> anyhow::Result<()> {
    let text = read_input(file)?;
    let tenant = match parse_tenant_file(&text) {
        Ok(tenant) => tenant,
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            bail!("{} problem(s) in {file}; nothing was saved", problems.len());
        }
    };
    let key = SecretKey::from_env()?;
    let created = store().await?.upsert_tenant(&tenant, &key).await?;
    println!(
        "tenant {} {}",
        tenant.id,
        if created { "created" } else { "updated" }
    );
    Ok(())
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the tenant file from standard input")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}

async fn resync(id: &str, full: bool) -> anyhow::Result<()> {
    store().await?.require_tenant(id, None).await?;
    let bus = Bus::connect(&amqp_url(), "usersync-cli").await?;
    let request = ResyncRequest {
        tenant_id: id.to_owned(),
        full,
        trigger: "manual".to_owned(),
    };
    let run_id = uuid::Uuid::new_v4();
    bus.request_resync(&request, &run_id.to_string()).await?;
    println!(
        "resync of {id} requested{}: run {run_id}, or the run already in progress",
        if full { " with a full read" } else { "" }
    );
    Ok(())
}
