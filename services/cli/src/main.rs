//! usersync: the operator's command line.

mod approve;
mod fields;
mod operate;
mod output;
mod plan;

use std::io::Read;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use usersync_admin as admin;
use usersync_graph::{GraphClient, GraphConfig};
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
    /// Tokens of usersync-api: create (shown once), list, revoke.
    ApiToken {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print it once (only its hash is stored).
    Create {
        /// The one tenant the token may see and change (it need not exist yet).
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        tenant: Option<String>,
        /// Every tenant: the operator's token.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Ids, scopes, when created and last used; never the tokens.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (`tok_…`): it is refused from now on.
    Revoke { token_id: String },
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
    /// Stop syncing a tenant: deletes it and its sync state; its PBX users are left as they are.
    Delete { id: String },
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
        } => output::tenant_list(&admin::tenants::list(&store().await?, None).await?, json),
        Command::Tenant {
            command: TenantCommand::Show { id, json },
        } => output::tenant_show(&admin::tenants::show(&store().await?, &id).await?.config, json),
        Command::Tenant {
            command: TenantCommand::Delete { id },
        } => {
            let store = store().await?;
            // The tenant's Graph subscriptions are deleted with its credentials,
            // which only the key decrypts; without it they lapse at their expiry.
            let deleted = match SecretKey::from_env() {
                Ok(key) => {
                    let graph = GraphClient::new(GraphConfig::from_env().map_err(anyhow::Error::msg)?);
                    admin::tenants::delete_with_subscriptions(&store, &key, &graph, &id, None).await?
                }
                Err(err) => {
                    let mut deleted = admin::tenants::delete(&store, &id, None).await?;
                    deleted.subscriptions_left.push(format!(
                        "its change-notification subscriptions, if any, were not deleted at Graph ({err}); \
                         Graph drops them when they expire (at most 29 days)"
                    ));
                    deleted
                }
            };
            println!("tenant {id} deleted: {}", deleted.effect);
            for left in &deleted.subscriptions_left {
                println!("  {left}");
            }
            Ok(())
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
            let lines = admin::status::status(&store().await?, id.as_deref()).await?;
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
            output::runs(&admin::status::runs(&store().await?, &id, limit).await?, json)
        }
        Command::Plan {
            id,
            json,
            all,
            live: false,
        } => plan::print_plan(&admin::plan::plan(&store().await?, &id, all).await?, json),
        Command::Plan {
            id,
            json,
            all,
            live: true,
        } => plan::print_plan(&plan::live(&store().await?, &id, all).await?, json),
        Command::Explain { id, user, json } => {
            plan::print_explanation(&admin::plan::explain(&store().await?, &id, &user).await?, json)
        }
        Command::ApproveDeletions { id } => approve::approve_deletions(&store().await?, &id).await,
        Command::Fields { id, json } => fields::show(&store().await?, &id, json).await,
        Command::ApiToken { command } => match command {
            TokenCommand::Create { tenant, json, .. } => {
                let token = admin::tokens::create(&store().await?, tenant.as_deref()).await?;
                output::new_token(&token, json)
            }
            TokenCommand::List { json } => output::tokens(&admin::tokens::list(&store().await?).await?, json),
            TokenCommand::Revoke { token_id } => {
                admin::tokens::revoke(&store().await?, &token_id).await?;
                println!("API token {token_id} revoked: it is refused from now on");
                Ok(())
            }
        },
    }
}

async fn store() -> anyhow::Result<Store> {
    Store::connect(&database_url(), 2).await
}

async fn apply(file: &str) -> anyhow::Result<()> {
    let text = read_input(file)?;
    let key = SecretKey::from_env()?;
    let store = store().await?;
    let applied = match admin::tenants::apply(&store, &key, &text, None, None).await {
        Ok(applied) => applied,
        Err(admin::AdminError::Invalid(problems)) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            bail!("{} problem(s) in {file}; nothing was saved", problems.len());
        }
        Err(err) => return Err(err.into()),
    };
    println!(
        "tenant {} {}",
        applied.id,
        if applied.created { "created" } else { "updated" }
    );
    if let Some(note) = applied.note {
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
