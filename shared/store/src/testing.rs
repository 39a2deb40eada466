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
    let (admin, connection) = tokio_postgres::connect(&format!("{SERVER_URL}/postgres"), NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(connection);
    admin
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
