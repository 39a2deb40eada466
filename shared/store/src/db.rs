use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{error::SqlState, NoTls};

use crate::mail_locks::MailLocks;
use crate::Result;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Arbitrary constant that names the migration lock among advisory locks.
const MIGRATION_LOCK: i64 = 0x7573_6572_7379_6e63; // "usersync"

/// The connection pool. Cheap to clone; clones share the pool and the mail
/// claims' lock session, so one `Store` per process.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// For connections of their own, outside the pool (LISTEN).
    pub(crate) config: tokio_postgres::Config,
    /// The process's mail claims (see [`crate::mail_locks`]).
    pub(crate) mail_locks: Arc<MailLocks>,
}

impl Store {
    /// Connects, creating the database if it is absent, and runs migrations.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Store> {
        let config = tokio_postgres::Config::from_str(url)
            .with_context(|| format!("DATABASE_URL is not a valid PostgreSQL URL: {}", redact(url)))?;
        create_database_if_absent(&config).await?;
        migrate(&config).await?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size_cap(pool_size))
            .build()
            .context("building the PostgreSQL pool")?;
        let mail_locks = Arc::new(MailLocks::new(config.clone()));
        Ok(Store {
            pool,
            config,
            mail_locks,
        })
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        pooled(&self.pool).await
    }
}

pub(crate) async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Object> {
    pool.get()
        .await
        .context("taking a PostgreSQL connection from the pool")
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

async fn create_database_if_absent(config: &tokio_postgres::Config) -> Result<()> {
    let name = config
        .get_dbname()
        .ok_or_else(|| anyhow!("DATABASE_URL names no database"))?
        .to_owned();
    match connect(config).await {
        Ok(_) => return Ok(()),
        Err(err) if err.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(err) => return Err(anyhow!(err).context(format!("connecting to PostgreSQL database {name}"))),
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect(&admin)
        .await
        .context("connecting to the postgres database to create the usersync database")?;
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
    created.map_err(|err| anyhow!(err).context(format!("creating database {name}")))?;
    if !exists {
        tracing::info!(database = %name, "created the database");
    }
    Ok(())
}

async fn migrate(config: &tokio_postgres::Config) -> Result<()> {
    let mut client = connect(config)
        .await
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
    let report = report.context("running database migrations")?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    Ok(())
}

async fn connect(
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
    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(super::redact("postgres://u:pw@h/db"), "postgres://u:****@h/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
