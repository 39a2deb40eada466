//! For tests against a real PostgreSQL (postgres@127.0.0.1:5432, trust auth):
//! a database per test, dropped afterwards, so tests run in parallel and leave
//! nothing behind.

use std::future::Future;

use tokio_postgres::NoTls;
use uuid::Uuid;

pub const SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432";
/// 32 bytes in base64: a key for tests only.
pub const TEST_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Runs `test` with the URL of a database nobody uses yet (the store creates it
/// on connect), then drops that database, also when the test fails.
pub async fn in_fresh_database<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = format!("usersync_test_{}", Uuid::new_v4().simple());
    let outcome = tokio::spawn(test(format!("{SERVER_URL}/{name}"))).await;
    drop_database(&name).await;
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
}

pub async fn drop_database(name: &str) {
    admin()
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .expect("dropping the test database");
}

/// A store on `url` holding tenant `tenant_id` with the smallest valid tenant
/// file (every user in scope, no mapping yet).
pub async fn store_with_minimal_tenant(url: &str, tenant_id: &str, pool_size: usize) -> crate::Store {
    let store = crate::Store::connect(url, pool_size)
        .await
        .expect("connecting the store");
    let document = serde_json::json!({
        "id": tenant_id, "name": "Acme AB", "type": "ad_sync", "mode": "user_sync",
        "provider_settings": {"tenant_id": "t", "client_id": "c", "client_secret": "s",
                              "user_filter": {"memberOf": []}},
        "pbx_company_id": tenant_id, "field_mapping": {}
    });
    let tenant = usersync_core::parse_tenant_file(&document.to_string()).expect("a valid tenant file");
    let key = crate::SecretKey::from_base64(TEST_KEY).expect("a valid key");
    store
        .upsert_tenant(&tenant, &key)
        .await
        .expect("saving the tenant");
    store
}

/// The database name at the end of a test URL.
pub fn database_name(url: &str) -> &str {
    url.rsplit_once('/').map_or(url, |(_, name)| name)
}

/// A connection to the server's `postgres` database, as its superuser.
pub async fn admin() -> tokio_postgres::Client {
    let (admin, connection) = tokio_postgres::connect(&format!("{SERVER_URL}/postgres"), NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(connection);
    admin
}

/// Runs `test` with the name of a login role created for it with
/// `attributes` (e.g. `CREATEDB`), then drops the role, also when the test
/// fails. For what a superuser is exempt from (a database's connection
/// limit) or always allowed (creating a database). Drop the role's
/// databases inside `test`.
pub async fn with_role<F, Fut>(attributes: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let role = format!("usersync_test_{}", Uuid::new_v4().simple());
    admin()
        .await
        .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN {attributes}"))
        .await
        .expect("creating the test role");
    let outcome = tokio::spawn(test(role.clone())).await;
    admin()
        .await
        .batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\""))
        .await
        .expect("dropping the test role");
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
}

/// `url` with `role` as its user.
pub fn as_role(url: &str, role: &str) -> String {
    url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1)
}

/// How a simulated outage refuses new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `ALLOW_CONNECTIONS false`: "database is not currently accepting
    /// connections", as while a server is restarting.
    Closed,
    /// `CONNECTION LIMIT 0`: `too many clients`. Superusers are exempt, so
    /// connect as a role of your own (see [`with_role`]).
    TooManyClients,
}

/// An outage of one test database on the shared server, leaving every other
/// database alone: new connections to it are refused and its backends are
/// terminated (as a restart does). Lasts until [`DatabaseOutage::end`]; a
/// test that fails meanwhile drops the database anyway.
pub struct DatabaseOutage {
    admin: tokio_postgres::Client,
    name: String,
    refusal: Refusal,
}

impl DatabaseOutage {
    pub async fn begin(url: &str, refusal: Refusal) -> DatabaseOutage {
        let name = database_name(url).to_owned();
        assert!(
            name.starts_with("usersync_test_"),
            "an outage only of a test database, not {name}"
        );
        let admin = admin().await;
        let setting = match refusal {
            Refusal::Closed => "ALLOW_CONNECTIONS false",
            Refusal::TooManyClients => "CONNECTION LIMIT 0",
        };
        admin
            .batch_execute(&format!("ALTER DATABASE \"{name}\" WITH {setting}"))
            .await
            .expect("refusing connections to the test database");
        let outage = DatabaseOutage { admin, name, refusal };
        outage.terminate_backends().await;
        outage
    }

    /// Terminates every backend of the database (again: one that was just
    /// connecting when connections were refused may show up late).
    pub async fn terminate_backends(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = self
                .admin
                .query(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&self.name],
                )
                .await
                .expect("terminating the test database's backends");
            if left.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "backends of {} still there after 30 s",
                self.name
            );
        }
    }

    /// Allows connections again.
    pub async fn end(self) {
        let setting = match self.refusal {
            Refusal::Closed => "ALLOW_CONNECTIONS true",
            Refusal::TooManyClients => "CONNECTION LIMIT -1",
        };
        self.admin
            .batch_execute(&format!("ALTER DATABASE \"{}\" WITH {setting}", self.name))
            .await
            .expect("allowing connections to the test database again");
    }
}

/// Waits until `check` gives a value, trying every 50 ms; fails the test
/// after `deadline`, naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
