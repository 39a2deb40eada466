//! PostgreSQL outages, simulated on one test database of the shared server
//! (connections refused, its backends terminated, as a restart does; see
//! `testing::DatabaseOutage`), never by restarting the server: the pool, the
//! probe, connecting at start and the LISTEN connection come through.

use std::time::Duration;

use usersync_runtime::{outage, Dependency, Health};
use usersync_store::testing::{
    admin, as_role, database_name, drop_database, in_fresh_database, store_with_minimal_tenant, wait_for,
    with_role, DatabaseOutage, Refusal,
};
use usersync_store::{RunEnd, Store};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);

/// An error the consumers treat as a database outage (the message goes back
/// to its queue unharmed), with the PostgreSQL or pool error in its chain.
fn assert_outage(err: &anyhow::Error) {
    assert_eq!(
        outage::classify(err),
        Some(Dependency::Database),
        "not classified as a database outage: {err:#}"
    );
    assert!(
        err.chain()
            .any(|cause| cause.is::<tokio_postgres::Error>() || cause.is::<deadpool_postgres::PoolError>()),
        "the cause is not kept: {err:#}"
    );
}

/// The backends of `count` pooled connections held at once, each of which
/// answered a statement.
async fn pooled_backends(store: &Store, count: usize) -> Vec<i32> {
    let mut clients = Vec::new();
    for _ in 0..count {
        clients.push(store.client().await.expect("a pooled connection"));
    }
    let mut pids = Vec::new();
    for client in &clients {
        let row = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("a pooled connection that works");
        pids.push(row.get(0));
    }
    pids
}

/// The reason `/healthz` gives for the database, once it contains `part`.
async fn database_down_because(health: &Health, part: &str) -> String {
    wait_for(
        &format!("the database reported down with {part:?}"),
        DEADLINE,
        || async {
            let (_, report) = health.report();
            report["down"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|down| down["dependency"] == "database")
                .filter_map(|down| down["reason"].as_str())
                .find(|reason| reason.contains(part))
                .map(str::to_owned)
        },
    )
    .await
}

/// What failed statements, a failed ping and the pool look like during and
/// after an outage that refuses connections with `refusal` (saying `says`).
async fn the_pool_comes_through(url: &str, store: &Store, refusal: Refusal, says: &str) {
    let before = pooled_backends(store, 4).await;
    let outage = DatabaseOutage::begin(url, refusal).await;
    let errors = [
        store.ping().await.unwrap_err(),
        store.mail_state("welcome:acme:p-1").await.unwrap_err(),
        store.runs("acme", 10).await.unwrap_err(),
        store.client().await.map(drop).unwrap_err(),
    ];
    for err in &errors {
        assert_outage(err);
    }
    // Once the broken connections are gone, new ones are refused, and the
    // error says why.
    assert!(format!("{:#}", errors[3]).contains(says), "{:#}", errors[3]);
    outage.end().await;
    store.ping().await.expect("a ping once connections are allowed");
    let after = pooled_backends(store, 4).await;
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "a connection the outage broke was handed out again: before {before:?}, after {after:?}"
    );
    assert_eq!(store.mail_state("welcome:acme:p-1").await.unwrap(), None);
}

#[tokio::test]
async fn the_pool_hands_out_no_broken_connection_and_errors_during_an_outage_are_outages() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 4).await;
        the_pool_comes_through(
            &url,
            &store,
            Refusal::Closed,
            "not currently accepting connections",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn too_many_clients_is_an_outage_waited_out_at_start_and_survived_by_the_pool() {
    // The connection limit binds only roles that are not superusers.
    with_role("CREATEDB", |role| async move {
        in_fresh_database(|url| async move {
            let url = as_role(&url, &role);
            let store = store_with_minimal_tenant(&url, "acme", 4).await;
            the_pool_comes_through(&url, &store, Refusal::TooManyClients, "too many connections").await;

            let outage = DatabaseOutage::begin(&url, Refusal::TooManyClients).await;
            let health = Health::new(&[Dependency::Database]);
            let waiting = tokio::spawn({
                let (url, health) = (url.clone(), health.clone());
                async move { Store::connect_waiting(&url, 2, &health).await }
            });
            database_down_because(&health, "too many connections").await;
            assert!(!waiting.is_finished(), "connect waits while refused");
            outage.end().await;
            let store = tokio::time::timeout(DEADLINE, waiting)
                .await
                .expect("connected once the limit is lifted")
                .unwrap()
                .expect("connected");
            assert!(health.is_up(Dependency::Database));
            store.ping().await.unwrap();
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn the_probe_reports_an_outage_and_the_recovery() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 2).await;
        let health = Health::new(&[Dependency::Database]);
        let watch = health.watch(Dependency::Database, store.probe());
        tokio::time::timeout(DEADLINE, health.wait_up(Dependency::Database))
            .await
            .expect("up after the first probe");

        let outage = DatabaseOutage::begin(&url, Refusal::Closed).await;
        // The probe runs every 5 s while the database is up.
        let reason = database_down_because(&health, "").await;
        assert!(!health.is_healthy());
        outage.end().await;
        tokio::time::timeout(DEADLINE, health.wait_up(Dependency::Database))
            .await
            .unwrap_or_else(|_| panic!("up again once connections are allowed (down because {reason})"));
        store.ping().await.unwrap();
        watch.abort();
    })
    .await;
}

#[tokio::test]
async fn connect_started_during_an_outage_waits_and_succeeds_once_connections_are_allowed() {
    in_fresh_database(|url| async move {
        // The database exists (a restart, not a first start).
        drop(store_with_minimal_tenant(&url, "acme", 1).await);
        let outage = DatabaseOutage::begin(&url, Refusal::Closed).await;

        // The simple form (the CLI's) fails at once, saying what is wrong.
        let Err(err) = Store::connect(&url, 1).await else {
            panic!("connected while connections are refused");
        };
        assert_outage(&err);
        let text = format!("{err:#}");
        assert!(
            text.contains("is unreachable") && text.contains("DATABASE_URL"),
            "{text}"
        );
        assert!(text.contains("not currently accepting connections"), "{text}");

        let health = Health::new(&[Dependency::Database]);
        let waiting = tokio::spawn({
            let (url, health) = (url.clone(), health.clone());
            async move { Store::connect_waiting(&url, 2, &health).await }
        });
        let reason = database_down_because(&health, "not currently accepting connections").await;
        assert!(
            reason.starts_with("waiting for PostgreSQL at 127.0.0.1:5432/usersync_test_"),
            "{reason}"
        );
        assert!(!waiting.is_finished(), "connect waits while refused");
        outage.end().await;
        let store = tokio::time::timeout(DEADLINE, waiting)
            .await
            .expect("connected once connections are allowed")
            .unwrap()
            .expect("connected");
        assert!(health.is_up(Dependency::Database));
        assert!(store.tenant("acme", None).await.unwrap().is_some());
    })
    .await;
}

/// `connect_waiting` gives up at once, without waiting, on an error a person must fix.
async fn configuration_error(url: &str) -> String {
    let health = Health::new(&[Dependency::Database]);
    let connecting = Store::connect_waiting(url, 1, &health);
    let Err(err) = tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("a configuration error ends the wait at once")
    else {
        panic!("connected to {url}");
    };
    assert_eq!(outage::classify(&err), None, "not an outage: {err:#}");
    format!("{err:#}")
}

#[tokio::test]
async fn a_bad_url_or_a_refused_login_stops_connect_at_once() {
    let text = configuration_error("postgres://postgres:pw@127.0.0.1:notaport/usersync").await;
    assert!(
        text.contains("DATABASE_URL is not a valid PostgreSQL URL"),
        "{text}"
    );
    assert!(!text.contains("pw@"), "the password is not shown: {text}");

    let nobody = format!("usersync_test_{}", Uuid::new_v4().simple());
    let text = configuration_error(&format!("postgres://{nobody}@127.0.0.1:5432/postgres")).await;
    assert!(
        text.contains(&format!("refused to log user {nobody} in")),
        "{text}"
    );
    assert!(
        text.contains("fix the user or password in DATABASE_URL"),
        "{text}"
    );
}

#[tokio::test]
async fn a_database_the_user_may_not_create_stops_connect_at_once() {
    with_role("NOCREATEDB", |role| async move {
        let name = format!("usersync_test_{}", Uuid::new_v4().simple());
        let text = configuration_error(&format!("postgres://{role}@127.0.0.1:5432/{name}")).await;
        assert!(
            text.contains(&format!(
                "database {name} does not exist and user {role} may not create it"
            )),
            "{text}"
        );
        assert!(text.contains("DATABASE_URL"), "{text}");
        drop_database(&name).await;
    })
    .await;
}

#[tokio::test]
async fn a_failed_migration_stops_connect_at_once() {
    in_fresh_database(|url| async move {
        // A database that is not usersync's: its `tenants` is something else.
        let name = database_name(&url).to_owned();
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        let (other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        other
            .batch_execute("CREATE TABLE tenants (name text)")
            .await
            .unwrap();
        drop(other);

        let text = configuration_error(&url).await;
        assert!(
            text.contains("migrating the database at 127.0.0.1:5432/"),
            "{text}"
        );
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(text.contains("already exists"), "names the cause: {text}");
    })
    .await;
}

#[tokio::test]
async fn the_listener_comes_back_after_an_outage_and_hears_the_next_run_end() {
    in_fresh_database(|url| async move {
        let store = store_with_minimal_tenant(&url, "acme", 2).await;
        let mut ends = store.run_ends().await.expect("listening");
        let outage = DatabaseOutage::begin(&url, Refusal::Closed).await;
        assert!(Store::connect(&url, 1).await.is_err(), "the outage is on");
        outage.end().await;
        // Runs may have ended unheard: the scheduler is told to look.
        let heard = tokio::time::timeout(DEADLINE, ends.next())
            .await
            .expect("listening again within the deadline");
        assert_eq!(heard, Some(RunEnd::Resumed));
        let run = Uuid::new_v4();
        store.start_run(run, "acme", "manual", false).await.unwrap();
        store.fail_run(run, "test.refused", "no").await.unwrap();
        let heard = tokio::time::timeout(DEADLINE, ends.next())
            .await
            .expect("the run end heard after the outage");
        assert_eq!(heard, Some(RunEnd::Ended("acme".to_owned())));
    })
    .await;
}
