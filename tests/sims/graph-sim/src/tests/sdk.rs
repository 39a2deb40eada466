use std::path::Path;

use serde_json::json;

use super::{tenant_body, TestSim, CLIENT_ID, SECRET, TENANT};

/// Microsoft's own Python SDK pages the users delta to the end and gets every user.
/// The script installs `msgraph-sdk` into a virtualenv under target/ on first use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsofts_python_sdk_pages_every_user() {
    let sim = TestSim::start().await;
    sim.create_tenant(tenant_body(1_000, json!({"page_size": 90})))
        .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../scripts/msgraph-sdk-check");

    let output = tokio::process::Command::new(&script)
        .args([&sim.base, TENANT, CLIENT_ID, SECRET, "1000"])
        .output()
        .await
        .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("msgraph-sdk paged 1000 users"), "{stdout}");
}
