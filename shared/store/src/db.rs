use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{config::Host, error::SqlState, NoTls};
use usersync_runtime::health::{reconnect_backoff, MAX_RECONNECT_DELAY};
use usersync_runtime::{outage, Dependency, Health};

use crate::mail_locks::MailLocks;
use crate::mail_marks::MailMarks;
use crate::Result;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Arbitrary constant that names the migration lock among advisory locks.
const MIGRATION_LOCK: i64 = 0x7573_6572_7379_6e63; // "usersync"

/// Longest wait for a pooled connection when every one is in use. Longer
/// than any connection is held on purpose (the applier holds one across a
/// PBX request, itself cut off at 30 s), so only a database that stopped
/// answering runs into it; the error then classifies as an outage.
pub(crate) const POOL_WAIT: Duration = Duration::from_secs(30);
/// Longest time to open one connection (TCP, startup, authentication).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest check of an idle pooled connection before it is handed out.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the probe's `SELECT 1`.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection whose peer vanished without closing it (a partition, a host
/// gone) is given up after this long unanswered, instead of TCP's default
/// of many minutes: a statement sent on it fails, and an idle LISTEN or lock
/// session finds out through keepalives.
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// The connection pool. Cheap to clone; clones share the pool and the mail
/// claims' lock session, so one `Store` per process.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// For connections of their own, outside the pool (LISTEN).
    pub(crate) config: tokio_postgres::Config,
    /// `host:port/database`, for messages.
    pub(crate) target: Arc<str>,
    /// The process's mail claims (see [`crate::mail_locks`]).
    pub(crate) mail_locks: Arc<MailLocks>,
    /// The writes of the process's sends in flight (see [`crate::mail_marks`]).
    pub(crate) mail_marks: Arc<MailMarks>,
}

impl Store {
    /// Connects, creating the database if it is absent, and runs migrations.
    /// Tries once: for the CLI and tests, where a person is waiting. An
    /// unreachable server is an error that says so (see
    /// [`Store::connect_waiting`] for services).
    pub async fn connect(url: &str, pool_size: usize) -> Result<Store> {
        let config = parse_url(url)?;
        open(&config, pool_size).await
    }

    /// As [`Store::connect`], but while PostgreSQL is unreachable (refused,
    /// `too many clients`, starting up or shutting down, the database closed
    /// to connections) waits with [`reconnect_backoff`], forever, reporting
    /// the reason to `health` (so `/healthz` names it). Logged once when the
    /// wait starts and once when it ends. Configuration errors (a bad URL,
    /// refused credentials, a database that cannot be created, a failed
    /// migration) end it at once.
    pub async fn connect_waiting(url: &str, pool_size: usize, health: &Health) -> Result<Store> {
        let config = parse_url(url)?;
        let target = describe(&config);
        let mut delays = reconnect_backoff();
        let mut waiting_since = None;
        loop {
            match open(&config, pool_size).await {
                Ok(store) => {
                    if let Some(since) = waiting_since.map(|since: Instant| since.elapsed()) {
                        tracing::info!(database = %target, waited_s = format!("{:.1}", since.as_secs_f64()),
                            "connected to PostgreSQL at {target}");
                    }
                    health.up(Dependency::Database);
                    return Ok(store);
                }
                Err(err) if outage::classify(&err) == Some(Dependency::Database) => {
                    let reason = err.root_cause().to_string();
                    if waiting_since.is_none() {
                        tracing::warn!(database = %target, %reason, "waiting for PostgreSQL at {target}: {reason}");
                        waiting_since = Some(Instant::now());
                    }
                    health.down(
                        Dependency::Database,
                        format!("waiting for PostgreSQL at {target}: {reason}"),
                    );
                    tokio::time::sleep(delays.next().unwrap_or(MAX_RECONNECT_DELAY)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        pooled(&self.pool).await
    }

    /// [`Store::ping`] as the probe a service watches the database with:
    /// `health.watch(Dependency::Database, store.probe())`.
    pub fn probe(&self) -> impl Fn() -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + 'static {
        let store = self.clone();
        move || {
            let store = store.clone();
            Box::pin(async move { store.ping().await })
        }
    }

    /// The probe for `Health::watch(Dependency::Database, ..)`: a pooled
    /// connection answers `SELECT 1` within [`PING_TIMEOUT`]. Waiting for the
    /// connection is bounded by the pool's own timeouts: a pool busy with
    /// work is not an outage.
    pub async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
            Ok(answer) => {
                answer.with_context(|| format!("checking PostgreSQL at {}", self.target))?;
                Ok(())
            }
            Err(_) => {
                // A connection that does not answer is not handed out again.
                drop(deadpool_postgres::Object::take(client));
                Err(anyhow!(
                    "PostgreSQL at {} did not answer SELECT 1 within {} s",
                    self.target,
                    PING_TIMEOUT.as_secs()
                ))
            }
        }
    }
}

pub(crate) async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Object> {
    // The pool error stays in the chain, so `outage::classify` sees it.
    pool.get()
        .await
        .context("taking a PostgreSQL connection from the pool")
}

fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    let mut config = tokio_postgres::Config::from_str(url).with_context(|| {
        format!(
            "DATABASE_URL is not a valid PostgreSQL URL ({}): set it to postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
            redact(url)
        )
    })?;
    if config.get_dbname().is_none() {
        anyhow::bail!(
            "DATABASE_URL names no database ({}): add it after the host, e.g. postgres://postgres@127.0.0.1:5432/usersync",
            redact(url)
        );
    }
    // Bounds for what the URL leaves unset; see DEAD_PEER_TIMEOUT.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(DEAD_PEER_TIMEOUT);
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        // tokio-postgres's default, two hours: nobody chose it.
        config.keepalives_idle(Duration::from_secs(30));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    // Short statements only: JIT compiling never pays for itself here, and on
    // tables without statistics (autovacuum off) the planner's estimates are
    // big enough to trigger it, at about a second a statement.
    let options = config.get_options().unwrap_or_default();
    if !options.contains("jit") {
        config.options(format!("{options} -c jit=off").trim());
    }
    Ok(config)
}

/// Creates the database if need be, migrates it and builds the pool.
async fn open(config: &tokio_postgres::Config, pool_size: usize) -> Result<Store> {
    let target = describe(config);
    create_database_if_absent(config, &target).await?;
    migrate(config, &target).await?;
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            // A connection whose server went away (a restart, a terminated
            // backend) is closed by its connection task, which `Fast` checks
            // (`is_closed`) before handing it out: it is dropped and a new one
            // opened. One that failed a statement is closed as well, so it is
            // never handed out twice. Checking each with a query (`Verified`)
            // would cost a round trip per statement for the rarer peer that
            // vanished silently, which DEAD_PEER_TIMEOUT bounds instead.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(pool_size_cap(pool_size))
        // The connection used last goes out first: each keeps buffers as big
        // as the biggest statement it sent, and handed out in turn every one
        // grew to a big tenant's page in the end (the differ's peak grew with
        // the tenant). The ones idle meanwhile stay small.
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(5)))
        .recycle_timeout(Some(RECYCLE_TIMEOUT))
        .build()
        .context("building the PostgreSQL pool")?;
    let mail_locks = Arc::new(MailLocks::new(config.clone()));
    let mail_marks = Arc::new(MailMarks::new(pool.clone()));
    Ok(Store {
        pool,
        config: config.clone(),
        target: target.into(),
        mail_locks,
        mail_marks,
    })
}

/// The pool size a service asks for, capped by `DATABASE_POOL_SIZE` when set:
/// with many replicas, their connections together must stay under PostgreSQL's
/// `max_connections`.
fn pool_size_cap(wanted: usize) -> usize {
    std::env::var("DATABASE_POOL_SIZE")
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .filter(|&cap| cap > 0)
        .map_or(wanted, |cap| wanted.min(cap))
}

async fn create_database_if_absent(config: &tokio_postgres::Config, target: &str) -> Result<()> {
    let name = config.get_dbname().unwrap_or_default().to_owned();
    match connect(config).await {
        Ok(_) => return Ok(()),
        Err(err) if err.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(err) => return Err(connect_failed(err, config, target)),
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect(&admin)
        .await
        .map_err(|err| connect_failed(err, &admin, &describe(&admin)))
        .with_context(|| {
            format!("database {name} does not exist; connecting to the postgres database to create it")
        })?;
    // Replicas starting together would race: CREATE DATABASE fails while
    // another one copies the template. One at a time, and check again inside.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the database creation lock")?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .context("looking for the database")?
        .is_some();
    let created = if exists {
        Ok(())
    } else {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        client.batch_execute(&format!("CREATE DATABASE {quoted}")).await
    };
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .context("releasing the database creation lock")?;
    created.map_err(|err| {
        let user = config.get_user().unwrap_or("(default)");
        let how = if err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            format!(
                "database {name} does not exist and user {user} may not create it: create it \
                 (CREATE DATABASE \"{name}\" OWNER \"{user}\"), grant {user} CREATEDB, \
                 or point DATABASE_URL at an existing database"
            )
        } else {
            format!("creating database {name} (DATABASE_URL) at {target}")
        };
        anyhow!(err).context(how)
    })?;
    if !exists {
        tracing::info!(database = %name, "created the database");
    }
    Ok(())
}

async fn migrate(config: &tokio_postgres::Config, target: &str) -> Result<()> {
    let mut client = connect(config)
        .await
        .map_err(|err| connect_failed(err, config, target))
        .context("connecting to PostgreSQL to migrate")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .context("releasing the migration lock")?;
    // Refinery's error keeps the PostgreSQL error as its source: a migration
    // cut off by an outage classifies as one, and is waited out and rerun
    // (each migration commits on its own).
    let report = report.with_context(|| {
        format!(
            "migrating the database at {target} (DATABASE_URL) failed: fix what the error names, \
             or point DATABASE_URL at this service's own database, then start again"
        )
    })?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    Ok(())
}

/// A failed connection attempt, with what to do about it; the PostgreSQL
/// error stays in the chain for `outage::classify`.
fn connect_failed(
    err: tokio_postgres::Error,
    config: &tokio_postgres::Config,
    target: &str,
) -> anyhow::Error {
    let refused_login = [
        SqlState::INVALID_PASSWORD,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
    ];
    let how = if err.code().is_some_and(|code| refused_login.contains(code)) {
        let user = config.get_user().unwrap_or("(default)");
        format!(
            "PostgreSQL at {target} refused to log user {user} in: fix the user or password in DATABASE_URL \
             (or the server's pg_hba.conf)"
        )
    } else if outage::database_unreachable(&err) {
        format!("PostgreSQL at {target} is unreachable: start it, or point DATABASE_URL at a running server")
    } else {
        format!("connecting to PostgreSQL at {target} (DATABASE_URL)")
    };
    anyhow!(err).context(how)
}

pub(crate) async fn connect(
    config: &tokio_postgres::Config,
) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// `host:port/database` (every host, for a URL naming several).
pub(crate) fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    format!("{hosts}/{}", config.get_dbname().unwrap_or(""))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((credentials, rest)) => match credentials.rsplit_once(':') {
            Some((user, _)) if user.contains("//") => format!("{user}:****@{rest}"),
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:****@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn a_url_is_described_by_host_port_and_database() {
        let config = parse_url("postgres://u:pw@db.example:6432/usersync").unwrap();
        assert_eq!(describe(&config), "db.example:6432/usersync");
        let config = parse_url("postgres://u@a,b:5433/x").unwrap();
        assert_eq!(describe(&config), "a:5432,b:5433/x");
    }

    #[test]
    fn a_bad_url_names_database_url_and_the_fix_without_the_password() {
        let err = parse_url("postgres://u:secret@h:notaport/db").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("DATABASE_URL is not a valid PostgreSQL URL"),
            "{text}"
        );
        assert!(text.contains("set it to postgres://"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        let err = parse_url("postgres://u@h:5432").unwrap_err();
        assert!(format!("{err:#}").contains("names no database"), "{err:#}");
    }

    #[test]
    fn unset_timeouts_get_bounds_and_chosen_ones_stay() {
        let config = parse_url("postgres://u@h/db").unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_tcp_user_timeout(), Some(&DEAD_PEER_TIMEOUT));
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
        let config = parse_url("postgres://u@h/db?connect_timeout=3&keepalives_idle=7").unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(7));
    }

    #[test]
    fn jit_is_off_unless_the_url_says_otherwise() {
        let config = parse_url("postgres://u@h/db").unwrap();
        assert_eq!(config.get_options(), Some("-c jit=off"));
        let config = parse_url("postgres://u@h/db?options=-c%20work_mem%3D8MB").unwrap();
        assert_eq!(config.get_options(), Some("-c work_mem=8MB -c jit=off"));
        let config = parse_url("postgres://u@h/db?options=-c%20jit%3Don").unwrap();
        assert_eq!(config.get_options(), Some("-c jit=on"));
    }
}
