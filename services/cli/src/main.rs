//! usersync: the operator's command line.

mod approve;
mod fields;
mod operate;
mod output;
mod plan;

use std::io::Read;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use usersync_core::parse_tenant_file;
use usersync_runtime::database_url;
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
        /// Follow the run (or the run in progress it joined, or the follow-up
        /// queued after a run that had read its round) to its end, showing
        /// progress; exit 0 when it succeeded, 2 when partial, 3 when failed.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (the run goes on).
        #[arg(long, default_value_t = 3600, requires = "wait")]
        timeout: u64,
    },
    /// Mode, last successful sync, last run and next scheduled run, per tenant.
    Status {
        /// Only this tenant.
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Dead-letter queues: list what is parked, replay it.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
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
    /// Dry run: what the next run would do to each user, from stored data; changes nothing.
    Plan {
        id: String,
        #[arg(long)]
        json: bool,
        /// Also list users the run would leave as they are.
        #[arg(long)]
        all: bool,
        /// Read the directory from Microsoft Graph now instead of the stored
        /// copy (progress on stderr); still changes nothing.
        #[arg(long)]
        live: bool,
    },
    /// One user's state, source and mapped values, last change and reasons (USER: object id, alias, mail or UPN).
    Explain {
        id: String,
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Let the next run delete the users the mass-deletion guard held, and request that run.
    ApproveDeletions { id: String },
    /// Source properties seen in the tenant's directory: users having each, an example.
    Fields {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// What is parked in the dead-letter queues and why.
    List {
        /// fetcher, differ, applier or notifier; all stages when left out.
        stage: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Put a stage's parked messages back to work (safe: consumers are idempotent).
    Replay { stage: String },
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
    // Like any Unix filter, end quietly when the reader goes away
    // (`usersync status | head`), instead of panicking on a broken pipe.
    // SAFETY: resetting a signal's disposition to its default installs no
    // handler of ours, and happens before any output is written.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
        Command::Resync {
            id,
            full,
            wait,
            timeout,
        } => {
            let wait = wait.then(|| std::time::Duration::from_secs(timeout));
            let code = operate::resync(&store().await?, &id, full, wait).await?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Status { id, json } => {
            let store = store().await?;
            let tenants = store.tenant_overview(id.as_deref()).await?;
            if let (Some(id), true) = (&id, tenants.is_empty()) {
                bail!("no tenant {id:?}: create it with `usersync tenant apply FILE`");
            }
            // Tenants the scheduler has not seen yet: their next run from their schedule.
            let schedules: std::collections::HashMap<String, usersync_core::Schedule> = store
                .tenants()
                .await?
                .into_iter()
                .map(|t| (t.config.id, t.config.schedule))
                .collect();
            let now = usersync_runtime::clock::now();
            let lines: Vec<output::StatusLine> = tenants
                .into_iter()
                .map(|t| {
                    let schedule = schedules.get(&t.tenant_id);
                    output::StatusLine::new(t, schedule, now)
                })
                .collect();
            match (&id, lines.as_slice()) {
                (Some(_), [line]) => output::status_detail(line, json),
                _ => output::status(&lines, json),
            }
        }
        Command::Dlq {
            command: DlqCommand::List { stage, json },
        } => operate::dlq_list(stage.as_deref(), json).await,
        Command::Dlq {
            command: DlqCommand::Replay { stage },
        } => operate::dlq_replay(&stage).await,
        Command::Runs { id, json, limit } => {
            let store = store().await?;
            store.require_tenant(&id, None).await?;
            output::runs(&store.runs(&id, limit).await?, json)
        }
        Command::Plan {
            id,
            json,
            all,
            live: false,
        } => plan::plan(&store().await?, &id, json, all).await,
        Command::Plan {
            id,
            json,
            all,
            live: true,
        } => plan::plan_live(&store().await?, &id, json, all).await,
        Command::Explain { id, user, json } => plan::explain(&store().await?, &id, &user, json).await,
        Command::ApproveDeletions { id } => approve::approve_deletions(&store().await?, &id).await,
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
    let store = store().await?;
    let previous = store.tenant(&tenant.id, None).await?;
    let created = store.upsert_tenant(&tenant, &key).await?;
    println!(
        "tenant {} {}",
        tenant.id,
        if created { "created" } else { "updated" }
    );
    if let Some(note) = previous.and_then(|p| plan::after_apply_note(&p.config, &tenant)) {
        println!("{note}");
    }
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
