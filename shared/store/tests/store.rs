//! The store against a real PostgreSQL (postgres@127.0.0.1:5432, trust auth).
//! Every test gets a database of its own, dropped afterwards, so tests run in
//! parallel and leave nothing behind.

use serde_json::{json, Value};
use tokio_postgres::types::Json;
use usersync_core::{parse_tenant_file, tenant::MASK, TenantConfig};
use usersync_runtime::{outage::classify, Dependency};
use usersync_store::testing::{in_fresh_database, DatabaseOutage, Refusal, TEST_KEY};
use usersync_store::{Claim, MailClaim, NewMail, Round, RunStart, SecretKey, Store};
use uuid::Uuid;

const CLIENT_SECRET: &str = "plain-client-secret-7f3a";
const PBX_TOKEN: &str = "plain-pbx-token-91c2";

// ---------------------------------------------------------------------------
// Database per test
// ---------------------------------------------------------------------------

async fn connect_store(url: &str) -> Store {
    Store::connect(url, 4).await.expect("connecting the store")
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn key() -> SecretKey {
    SecretKey::from_base64(TEST_KEY).expect("a valid test key")
}

fn tenant(id: &str) -> TenantConfig {
    let document = json!({
        "id": id,
        "name": "Acme AB",
        "type": "ad_sync",
        "mode": "user_sync",
        "provider_settings": {
            "tenant_id": "t-1",
            "client_id": "c-1",
            "client_secret": CLIENT_SECRET,
            "user_filter": {"memberOf": ["Telephony"]}
        },
        "pbx_company_id": "acme",
        "field_mapping": {
            "alias": "mailNickname",
            "first_name": "givenName",
            "surname": "surname",
            "pstn_fixed": "businessPhones[0]"
        },
        "pbx": {"api_url": "https://pbx.example", "api_token": PBX_TOKEN}
    });
    parse_tenant_file(&document.to_string()).expect("a valid tenant file")
}

async fn store_with_tenant(url: &str, tenant_id: &str) -> Store {
    let store = connect_store(url).await;
    store
        .upsert_tenant(&tenant(tenant_id), &key())
        .await
        .expect("saving the tenant");
    store
}

/// A directory user as recorded: its merged source and whether it is removed.
async fn directory_user(store: &Store, tenant_id: &str, object_id: &str) -> Option<(Value, bool)> {
    let client = store.client().await.expect("a connection");
    let row = client
        .query_opt(
            "SELECT source, removed FROM directory_users WHERE tenant_id = $1 AND object_id = $2",
            &[&tenant_id, &object_id],
        )
        .await
        .expect("reading directory_users");
    row.map(|row| {
        let Json(source): Json<Value> = row.get("source");
        (source, row.get("removed"))
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_connects_create_the_database_once_and_migrate_once() {
    in_fresh_database(|url| async move {
        let connects = (0..4).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::connect(&url, 2).await })
        });
        let mut stores = Vec::new();
        for connect in connects {
            let store = connect
                .await
                .expect("the connect task")
                .unwrap_or_else(|err| panic!("a concurrent connect failed: {err:#}"));
            stores.push(store);
        }

        let client = stores[0].client().await.expect("a connection");
        let history: Vec<(i32, String)> = client
            .query(
                "SELECT version, name FROM refinery_schema_history ORDER BY version",
                &[],
            )
            .await
            .expect("reading the migration history")
            .iter()
            .map(|row| (row.get("version"), row.get("name")))
            .collect();
        assert_eq!(history, migrations_on_disk());
    })
    .await;
}

/// (version, name) of every migration file, from names like `V1__initial.sql`.
fn migrations_on_disk() -> Vec<(i32, String)> {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let mut migrations: Vec<(i32, String)> = std::fs::read_dir(directory)
        .expect("the migrations directory")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|file| {
            let stem = file.strip_suffix(".sql")?.strip_prefix('V')?;
            let (version, name) = stem.split_once("__")?;
            Some((version.parse().ok()?, name.to_owned()))
        })
        .collect();
    migrations.sort();
    assert!(!migrations.is_empty(), "no migrations found in {directory}");
    migrations
}

#[tokio::test]
async fn tenant_secrets_are_encrypted_at_rest_and_masked_without_a_key() {
    in_fresh_database(|url| async move {
        let store = connect_store(&url).await;
        let config = tenant("acme");
        assert!(store.upsert_tenant(&config, &key()).await.expect("insert"), "new tenant");
        assert!(!store.upsert_tenant(&config, &key()).await.expect("update"), "existing tenant");

        let decrypted = store
            .tenant("acme", Some(&key()))
            .await
            .expect("loading with the key")
            .expect("the tenant exists");
        assert_eq!(decrypted.config, config);
        assert_eq!(decrypted.config.provider_settings.client_secret, CLIENT_SECRET);

        let masked = store
            .tenant("acme", None)
            .await
            .expect("loading without a key")
            .expect("the tenant exists");
        assert_eq!(masked.config.provider_settings.client_secret, MASK);
        assert_eq!(masked.config.pbx.as_ref().map(|pbx| pbx.api_token.as_str()), Some(MASK));
        assert_eq!(masked.config, config.masked());

        let client = store.client().await.expect("a connection");
        let row = client
            .query_one(
                "SELECT config::text AS config, client_secret_enc, pbx_token_enc FROM tenants WHERE id = 'acme'",
                &[],
            )
            .await
            .expect("reading the raw row");
        let raw_config: String = row.get("config");
        let client_secret_enc: String = row.get("client_secret_enc");
        let pbx_token_enc: Option<String> = row.get("pbx_token_enc");
        for secret in [CLIENT_SECRET, PBX_TOKEN] {
            assert!(!raw_config.contains(secret), "config holds a secret: {raw_config}");
            assert!(!client_secret_enc.contains(secret));
        }
        assert_ne!(client_secret_enc, CLIENT_SECRET);
        let pbx_token_enc = pbx_token_enc.expect("the PBX token is stored");
        assert!(!pbx_token_enc.contains(PBX_TOKEN));
        assert_eq!(key().decrypt(&client_secret_enc).expect("decrypts"), CLIENT_SECRET);

        assert!(store.tenant("nobody", Some(&key())).await.expect("loading").is_none());
    })
    .await;
}

#[tokio::test]
async fn a_tenant_has_one_run_at_a_time() {
    in_fresh_database(|url| async move {
        let store = store_with_tenant(&url, "acme").await;
        let first = Uuid::new_v4();
        let second = Uuid::new_v4();

        let start = |run_id| {
            let store = store.clone();
            async move {
                store
                    .start_run(run_id, "acme", "manual", false)
                    .await
                    .expect("starting a run")
            }
        };
        assert_eq!(start(first).await, RunStart::Started);
        assert_eq!(start(second).await, RunStart::Coalesced(first));
        assert_eq!(start(first).await, RunStart::Resumed);

        let event = store
            .fail_run(first, "test.refused", "the directory said no")
            .await
            .expect("failing")
            .expect("the first failure ends the run and tells the notifier");
        match event {
            usersync_contract::Event::RunFinished {
                tenant_id,
                run_id,
                outcome,
                error,
                ..
            } => {
                assert_eq!(
                    (tenant_id.as_str(), run_id, outcome.as_str()),
                    ("acme", first, "failed")
                );
                assert_eq!(error.as_deref(), Some("the directory said no"));
            }
            other => panic!("not a run-finished event: {other:?}"),
        }
        assert!(
            store
                .fail_run(first, "test.refused", "again")
                .await
                .expect("failing twice")
                .is_none(),
            "failed twice"
        );
        assert_eq!(start(first).await, RunStart::AlreadyFetched);

        let run = store.run(first).await.expect("loading").expect("the run exists");
        assert_eq!(run.state, "failed");
        assert_eq!(run.error.as_deref(), Some("the directory said no"));
        assert!(run.finished_at.is_some());

        // The coalesced request never became a run; now that the tenant is idle it can.
        assert!(store.run(second).await.expect("loading").is_none());
        assert_eq!(start(second).await, RunStart::Started);
    })
    .await;
}

#[tokio::test]
async fn user_pages_are_recorded_once_per_round_and_merge_attributes() {
    in_fresh_database(|url| async move {
        let store = store_with_tenant(&url, "acme").await;
        let run_id = Uuid::new_v4();
        store
            .start_run(run_id, "acme", "manual", true)
            .await
            .expect("run");
        let round = Round {
            run_id,
            round_id: Uuid::new_v4(),
        };

        let page_one = [
            json!({"id": "u1", "givenName": "Anna", "surname": "Berg", "mail": "anna@acme.example"}),
            json!({"id": "u2", "givenName": "Bo", "@odata.type": "#microsoft.graph.user"}),
        ];
        store
            .record_users_page(round, "acme", 1, &page_one)
            .await
            .expect("page 1");
        let anna_after_page_one =
            json!({"givenName": "Anna", "surname": "Berg", "mail": "anna@acme.example"});
        assert_eq!(
            directory_user(&store, "acme", "u1").await,
            Some((anna_after_page_one.clone(), false))
        );
        assert_eq!(
            directory_user(&store, "acme", "u2").await,
            Some((json!({"givenName": "Bo"}), false))
        );

        // A redelivered page 1, even with other content, changes nothing.
        let redelivered = [
            json!({"id": "u1", "givenName": "Changed"}),
            json!({"id": "u3", "givenName": "Cleo"}),
        ];
        store
            .record_users_page(round, "acme", 1, &redelivered)
            .await
            .expect("page 1 again");
        assert_eq!(
            directory_user(&store, "acme", "u1").await,
            Some((anna_after_page_one, false))
        );
        assert_eq!(directory_user(&store, "acme", "u3").await, None);

        let page_two = [
            json!({"id": "u1", "surname": null, "jobTitle": "CEO"}),
            json!({"id": "u2", "@removed": {"reason": "deleted"}}),
        ];
        store
            .record_users_page(round, "acme", 2, &page_two)
            .await
            .expect("page 2");
        let (anna, anna_removed) = directory_user(&store, "acme", "u1").await.expect("u1");
        assert!(!anna_removed);
        assert_eq!(anna["givenName"], "Anna", "an absent attribute is kept");
        assert_eq!(anna["mail"], "anna@acme.example", "an absent attribute is kept");
        assert_eq!(anna["jobTitle"], "CEO");
        assert!(
            anna.get("surname").is_none_or(Value::is_null),
            "an explicit null clears: {anna}"
        );
        let (bo, bo_removed) = directory_user(&store, "acme", "u2").await.expect("u2");
        assert!(bo_removed, "@removed marks the user removed");
        assert_eq!(bo, json!({"givenName": "Bo"}));

        assert_eq!(store.pages_recorded(round).await.expect("pages"), 2);

        // A resumed run reads again in a new round: its page 1 is a page of its own.
        let next_round = Round {
            run_id,
            round_id: Uuid::new_v4(),
        };
        let page_one_again = [json!({"id": "u3", "givenName": "Cleo"})];
        store
            .record_users_page(next_round, "acme", 1, &page_one_again)
            .await
            .expect("page 1 of the next round");
        assert_eq!(
            directory_user(&store, "acme", "u3").await,
            Some((json!({"givenName": "Cleo"}), false))
        );
        assert_eq!(store.pages_recorded(next_round).await.expect("pages"), 1);
    })
    .await;
}

fn outgoing<'a>(id: &'a str, kind: &'a str, recipient: &'a str) -> NewMail<'a> {
    NewMail {
        id,
        tenant_id: "acme",
        kind,
        recipient,
        run_id: None,
        detail: json!({"user": "anna"}),
    }
}

/// The claim this attempt now owns; anything else fails the test.
async fn claim_to_send(store: &Store, mail: &NewMail<'_>) -> MailClaim {
    match store.claim_mail(mail, chrono::Utc::now()).await.unwrap() {
        Claim::Send(claim) => claim,
        other => panic!("expected to own {}, found {other:?}", mail.id),
    }
}

async fn claim_state(store: &Store, mail: &NewMail<'_>) -> String {
    match store.claim_mail(mail, chrono::Utc::now()).await.unwrap() {
        Claim::Send(claim) => panic!("{} claimed again (attempt {})", mail.id, claim.attempt()),
        Claim::Settled { state } => state,
        Claim::InFlight => "in flight".into(),
        Claim::Abandoned => "abandoned".into(),
    }
}

/// Ends the one lock session that holds mail claims (another store's: a
/// process's), as the death of the sending process does or a lost connection
/// would, and waits until PostgreSQL has let the session go.
async fn kill_claimant(store: &Store) {
    let client = store.client().await.unwrap();
    let ended = client
        .query(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks
             WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND pid <> pg_backend_pid()
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap();
    let ended: Vec<bool> = ended.iter().map(|row| row.get(0)).collect();
    assert_eq!(ended, [true], "one claimant session, ended");
}

#[tokio::test]
async fn a_mail_is_claimed_once_and_never_resent() {
    in_fresh_database(|url| async move {
        let store = connect_store(&url).await;
        let t0 = chrono::Utc::now();
        let mail = outgoing("welcome:acme:pbx-17", "welcome", "anna@acme.example");
        let first = claim_to_send(&store, &mail).await;
        assert_eq!(first.attempt(), 1);
        // A second attempt while the first is alive waits.
        assert_eq!(claim_state(&store, &mail).await, "in flight");
        // A temporary failure frees it for the next attempt.
        first.release("451 try later").await.unwrap();
        let second = claim_to_send(&store, &mail).await;
        assert_eq!(second.attempt(), 2);
        second.sent(t0).await.unwrap();
        assert_eq!(claim_state(&store, &mail).await, "sent");
        assert_eq!(store.mail_state(mail.id).await.unwrap().as_deref(), Some("sent"));

        // A send cancelled before its data went out (the claim dropped) is free at once.
        let cancelled = outgoing("welcome:acme:pbx-18", "welcome", "bo@acme.example");
        drop(claim_to_send(&store, &cancelled).await);
        assert_eq!(claim_to_send(&store, &cancelled).await.attempt(), 2);

        // Refused for good: recorded with the reply and settled.
        let refused = outgoing("welcome:acme:pbx-19", "welcome", "cia@acme.example");
        claim_to_send(&store, &refused)
            .await
            .fail("550 no such user")
            .await
            .unwrap();
        assert_eq!(claim_state(&store, &refused).await, "failed");

        // No reply after the data: uncertain, settled.
        let unconfirmed = outgoing("welcome:acme:pbx-20", "welcome", "dan@acme.example");
        let mut claim = claim_to_send(&store, &unconfirmed).await;
        assert!(claim.transmitting().await.unwrap());
        claim.uncertain("connection reset after the data").await.unwrap();
        assert_eq!(claim_state(&store, &unconfirmed).await, "uncertain");
    })
    .await;
}

#[tokio::test]
async fn a_claim_whose_session_died_is_taken_over_at_once() {
    in_fresh_database(|url| async move {
        // Two stores: two notifier processes, each with its own lock session.
        let (dying, other) = (connect_store(&url).await, connect_store(&url).await);
        // The process died before the message data went out: sent again, now.
        let early = outgoing("welcome:acme:pbx-21", "welcome", "eva@acme.example");
        let mut dead = claim_to_send(&dying, &early).await;
        assert_eq!(
            claim_state(&other, &early).await,
            "in flight",
            "held while its session lives"
        );
        kill_claimant(&other).await;
        let again = claim_to_send(&other, &early).await;
        assert_eq!(again.attempt(), 2);
        // The dead claimant's process, still running, must not send it now.
        assert!(!dead.transmitting().await.unwrap(), "its lock is gone");
        again.sent(chrono::Utc::now()).await.unwrap();
        drop(dead);
        assert_eq!(claim_state(&other, &early).await, "sent");

        // It died once the data was going out: the server may have the mail,
        // so it is uncertain, reported, and not sent again. The process that
        // lost its lock session takes new claims on a fresh one.
        let late = outgoing("welcome:acme:pbx-22", "welcome", "fia@acme.example");
        let mut dead = claim_to_send(&dying, &late).await;
        assert!(dead.transmitting().await.unwrap());
        assert_eq!(claim_state(&other, &late).await, "in flight");
        kill_claimant(&other).await;
        assert_eq!(claim_state(&other, &late).await, "abandoned");
        drop(dead);
        assert_eq!(claim_state(&other, &late).await, "uncertain");
        let problems = other.unreported_mail_problems("acme").await.unwrap();
        let ids: Vec<_> = problems.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, [late.id]);
        assert!(problems[0]
            .reply
            .as_deref()
            .unwrap()
            .contains("stopped after the message data went out"));
    })
    .await;
}

#[tokio::test]
async fn a_process_with_a_lost_lock_session_sends_none_of_its_claims_and_claims_anew() {
    in_fresh_database(|url| async move {
        let (store, other) = (connect_store(&url).await, connect_store(&url).await);
        let mail = outgoing("welcome:acme:pbx-23", "welcome", "gus@acme.example");
        let mut orphan = claim_to_send(&store, &mail).await;
        kill_claimant(&other).await;
        // Nobody took it over yet, but the lock is gone: no data may go out.
        assert!(!orphan.transmitting().await.unwrap());
        drop(orphan);
        // New claims reconnect; the mail is sent by the next attempt.
        let next = claim_to_send(&store, &mail).await;
        assert_eq!(next.attempt(), 2);
        assert!(next_transmits(next).await);
        assert_eq!(claim_state(&other, &mail).await, "sent");
    })
    .await;
}

async fn next_transmits(mut claim: MailClaim) -> bool {
    let transmitting = claim.transmitting().await.unwrap();
    claim.sent(chrono::Utc::now()).await.unwrap();
    transmitting
}

/// The sessions holding this database's mail claims, and how many each holds.
async fn claim_lock_holders(store: &Store) -> Vec<(i32, i64)> {
    let client = store.client().await.unwrap();
    let rows = client
        .query(
            "SELECT pid, count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND objsubid = 2 AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             GROUP BY pid",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

/// The number of mail claims each holding session holds.
async fn claim_locks_by_session(store: &Store) -> Vec<i64> {
    claim_lock_holders(store)
        .await
        .into_iter()
        .map(|(_, count)| count)
        .collect()
}

#[tokio::test]
async fn claims_held_through_a_database_outage_are_sent_once_and_new_claims_take_a_new_session() {
    in_fresh_database(|url| async move {
        // Two notifier processes; `store`'s lock session dies in the outage.
        let (store, other) = (connect_store(&url).await, connect_store(&url).await);
        let waiting = outgoing("welcome:acme:pbx-50", "welcome", "jan@acme.example");
        let going_out = outgoing("welcome:acme:pbx-51", "welcome", "kim@acme.example");
        let mut waiting_claim = claim_to_send(&store, &waiting).await;
        let going_out_claim = {
            let mut claim = claim_to_send(&store, &going_out).await;
            assert!(claim.transmitting().await.unwrap());
            claim
        };
        let [(old_session, 2)] = claim_lock_holders(&other).await[..] else {
            panic!("one session holds both claims");
        };

        let outage = DatabaseOutage::begin(&url, Refusal::Closed).await;
        let new = outgoing("welcome:acme:pbx-52", "welcome", "lo@acme.example");
        let err = store.claim_mail(&new, chrono::Utc::now()).await.unwrap_err();
        assert_eq!(classify(&err), Some(Dependency::Database), "{err:#}");
        // The lost session is noticed without asking the database: a claim
        // whose data had not gone out may not start now.
        assert!(!waiting_claim.transmitting().await.unwrap());
        outage.end().await;

        // Nor later: its lock went with the session, and the other process
        // takes the mail over and sends it, once.
        assert!(!waiting_claim.transmitting().await.unwrap());
        let taken_over = claim_to_send(&other, &waiting).await;
        assert_eq!(taken_over.attempt(), 2);
        assert!(next_transmits(taken_over).await);
        drop(waiting_claim);
        assert_eq!(claim_state(&store, &waiting).await, "sent");

        // The mail whose data was going out may be at the server: the other
        // process does not send it again, and the attempt that sent it records
        // what the server answered.
        assert_eq!(claim_state(&other, &going_out).await, "abandoned");
        going_out_claim.sent(chrono::Utc::now()).await.unwrap();
        assert_eq!(claim_state(&other, &going_out).await, "sent");

        // New claims of the process that lost its session take a new one.
        let fresh = claim_to_send(&store, &new).await;
        let [(new_session, 1)] = claim_lock_holders(&other).await[..] else {
            panic!("one session holds the new claim");
        };
        assert_ne!(new_session, old_session);
        assert!(next_transmits(fresh).await);
    })
    .await;
}

#[tokio::test]
async fn one_session_holds_the_claims_of_every_mail_in_flight() {
    in_fresh_database(|url| async move {
        let store = connect_store(&url).await;
        let ids: Vec<String> = (0..6).map(|i| format!("welcome:acme:pbx-3{i}")).collect();
        let mut claims = Vec::new();
        for id in &ids {
            claims.push(claim_to_send(&store, &outgoing(id, "welcome", "hal@acme.example")).await);
        }
        // More claims than the pool (4) has connections, all on one session.
        assert_eq!(claim_locks_by_session(&store).await, [6]);
        for claim in claims {
            claim.sent(chrono::Utc::now()).await.unwrap();
        }
        assert!(
            claim_locks_by_session(&store).await.is_empty(),
            "every claim released"
        );
    })
    .await;
}

/// A mail that goes out is written three times (claimed, `transmitting`,
/// its outcome). Those writes can be made in place (HOT updates, no index
/// entries) only while no index of the table reads `state`, in its columns
/// or its predicate, and the pages have room (V21). An index that read it
/// again would quietly double the database's work per mail.
#[tokio::test]
async fn claims_ended_together_are_all_released_the_cancelled_ones_too() {
    in_fresh_database(|url| async move {
        let store = connect_store(&url).await;
        let ids: Vec<String> = (0..40).map(|i| format!("welcome:acme:pbx-6{i}")).collect();
        let mails: Vec<NewMail<'_>> = ids
            .iter()
            .map(|id| outgoing(id, "welcome", "max@acme.example"))
            .collect();
        let mut claims = Vec::new();
        for mail in &mails {
            claims.push(claim_to_send(&store, mail).await);
        }
        assert_eq!(claim_locks_by_session(&store).await, [40]);

        // Ten sends cancelled (their claims dropped unsettled) while thirty
        // record their outcomes at once: the session's unlocker takes them
        // in the order they came, so once the last outcome is back every
        // claim is released.
        let cancelled = claims.split_off(30);
        drop(cancelled);
        let outcomes =
            futures::future::join_all(claims.into_iter().map(|claim| claim.sent(chrono::Utc::now()))).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert!(
            claim_locks_by_session(&store).await.is_empty(),
            "every claim released"
        );

        // A cancelled send's mail is claimed again at once and sent once.
        let again = claim_to_send(&store, &mails[35]).await;
        assert_eq!(again.attempt(), 2);
        assert!(next_transmits(again).await);
        assert_eq!(claim_state(&store, &mails[35]).await, "sent");
        assert_eq!(claim_state(&store, &mails[5]).await, "sent");
    })
    .await;
}

#[tokio::test]
async fn no_index_of_mails_reads_the_state_a_send_changes() {
    in_fresh_database(|url| async move {
        let store = connect_store(&url).await;
        let client = store.client().await.unwrap();
        let reading: Vec<String> = client
            .query(
                "SELECT i.indexrelid::regclass::text FROM pg_index i
                 WHERE i.indrelid = 'mails'::regclass
                   AND (EXISTS (SELECT 1 FROM pg_attribute a
                                WHERE a.attrelid = i.indrelid AND a.attname = 'state'
                                  AND a.attnum = ANY (i.indkey))
                        OR coalesce(pg_get_expr(i.indpred, i.indrelid), '') ~ '\\mstate\\M'
                        OR coalesce(pg_get_expr(i.indexprs, i.indrelid), '') ~ '\\mstate\\M')",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(
            reading.is_empty(),
            "indexes of mails reading its state: {reading:?}"
        );
        let options: Vec<String> = client
            .query_one(
                "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'mails'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(options, ["fillfactor=50"]);
    })
    .await;
}

/// A batch's chunk of mails is claimed in two statements, and each mail is
/// found as a claim of its own would find it; the sends of the chunk then
/// mark and settle their mails at once, together.
#[tokio::test]
async fn a_chunk_of_mails_is_claimed_at_once_each_as_if_alone() {
    in_fresh_database(|url| async move {
        let (store, other, dying) = (
            connect_store(&url).await,
            connect_store(&url).await,
            connect_store(&url).await,
        );
        let mail = |id| outgoing(id, "welcome", "jo@acme.example");
        assert!(next_transmits(claim_to_send(&store, &mail("welcome:acme:sent")).await).await);
        claim_to_send(&store, &mail("welcome:acme:pending"))
            .await
            .release("451 later")
            .await
            .unwrap();
        // Its claimant died while the data went out.
        let mut cut = claim_to_send(&dying, &mail("welcome:acme:cut")).await;
        assert!(cut.transmitting().await.unwrap());
        kill_claimant(&store).await;
        let held = claim_to_send(&other, &mail("welcome:acme:held")).await;

        let fresh: Vec<String> = (0..40).map(|i| format!("welcome:acme:new-{i}")).collect();
        let mut ids = vec![
            "welcome:acme:sent",
            "welcome:acme:pending",
            "welcome:acme:cut",
            "welcome:acme:held",
            "welcome:acme:new-0",
        ];
        ids.extend(fresh.iter().map(String::as_str));
        let chunk: Vec<NewMail<'_>> = ids.iter().map(|id| mail(id)).collect();
        let claims = store.claim_mails(&chunk, chrono::Utc::now()).await.unwrap();
        let mut sends = Vec::new();
        let mut found = Vec::new();
        for claim in claims {
            found.push(match claim {
                Claim::Send(claim) => {
                    let attempt = format!("attempt {}", claim.attempt());
                    sends.push(claim);
                    attempt
                }
                Claim::Settled { state } => state,
                Claim::InFlight => "in flight".into(),
                Claim::Abandoned => "abandoned".into(),
            });
        }
        // new-0 twice in the chunk: its second entry finds it in flight.
        let mut expected = vec![
            "sent",
            "attempt 2",
            "abandoned",
            "in flight",
            "attempt 1",
            "in flight",
        ];
        expected.extend(["attempt 1"; 39]);
        assert_eq!(found, expected);
        held.release("451 later").await.unwrap();
        assert_eq!(
            claim_locks_by_session(&store).await,
            [41],
            "the chunk's claims on one session"
        );

        // Every send of the chunk at once: marked and settled in groups.
        let transmitted = futures::future::join_all(sends.into_iter().map(next_transmits)).await;
        assert!(transmitted.iter().all(|&t| t), "{transmitted:?}");
        for id in &ids[..3] {
            let expected = if *id == "welcome:acme:cut" {
                "uncertain"
            } else {
                "sent"
            };
            assert_eq!(
                store.mail_state(id).await.unwrap().as_deref(),
                Some(expected),
                "{id}"
            );
        }
        for id in &fresh {
            assert_eq!(
                store.mail_state(id).await.unwrap().as_deref(),
                Some("sent"),
                "{id}"
            );
        }
        assert!(
            claim_locks_by_session(&store).await.is_empty(),
            "every claim released"
        );
    })
    .await;
}

#[tokio::test]
async fn one_process_claims_a_mail_once_however_many_events_ask_at_once() {
    in_fresh_database(|url| async move {
        let store = connect_store(&url).await;
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let store = store.clone();
            attempts.spawn(async move {
                let mail = outgoing("welcome:acme:pbx-40", "welcome", "ida@acme.example");
                store.claim_mail(&mail, chrono::Utc::now()).await.unwrap()
            });
        }
        let mut owners = Vec::new();
        let mut in_flight = 0;
        while let Some(claim) = attempts.join_next().await {
            match claim.unwrap() {
                Claim::Send(claim) => owners.push(claim),
                Claim::InFlight => in_flight += 1,
                other => panic!("{other:?}"),
            }
        }
        // Advisory locks are re-entrant in a session: the process itself keeps
        // a second event of the same mail from claiming it.
        assert_eq!((owners.len(), in_flight), (1, 7));
        let mail = outgoing("welcome:acme:pbx-40", "welcome", "ida@acme.example");
        assert_eq!(claim_state(&store, &mail).await, "in flight");
        owners.pop().unwrap().sent(chrono::Utc::now()).await.unwrap();
        assert_eq!(claim_state(&store, &mail).await, "sent");
    })
    .await;
}

#[tokio::test]
async fn a_digest_takes_each_mail_problem_once() {
    in_fresh_database(|url| async move {
        let store = connect_store(&url).await;
        let now = chrono::Utc::now();
        let nowhere = outgoing("welcome:acme:pbx-1", "welcome", "");
        assert!(store.record_mail_without_address(&nowhere).await.unwrap());
        assert!(
            !store.record_mail_without_address(&nowhere).await.unwrap(),
            "recorded once"
        );
        let refused = outgoing("welcome:acme:pbx-2", "welcome", "bo@acme.example");
        claim_to_send(&store, &refused)
            .await
            .fail("550 no such user")
            .await
            .unwrap();
        assert_eq!(store.unreported_mail_problems("acme").await.unwrap().len(), 2);
        // Of the run, one mail waits for a retry and one is being sent.
        let run = Uuid::new_v4();
        let of_run = |id| NewMail {
            run_id: Some(run),
            ..outgoing(id, "welcome", "cia@acme.example")
        };
        let (deferred, sending) = (of_run("welcome:acme:pbx-3"), of_run("welcome:acme:pbx-4"));
        claim_to_send(&store, &deferred)
            .await
            .release("451 try later")
            .await
            .unwrap();
        let in_hand = claim_to_send(&store, &sending).await;

        let digest = NewMail {
            run_id: Some(run),
            ..outgoing("digest:run-1", "digest", "it@acme.example")
        };
        let (claim, problems) = store.claim_digest(&digest, now).await.unwrap();
        assert!(matches!(claim, Claim::Send(_)), "{claim:?}");
        let states: Vec<_> = problems
            .iter()
            .map(|p| (p.state.as_str(), p.is_unsettled()))
            .collect();
        assert_eq!(
            states,
            [
                ("no_address", false),
                ("failed", false),
                ("pending", true),
                ("sending", true)
            ]
        );
        assert_eq!(problems[1].reply.as_deref(), Some("550 no such user"));
        assert_eq!(problems[0].detail["user"], "anna");
        assert!(store.unreported_mail_problems("acme").await.unwrap().is_empty());

        // The next digest does not report them again; of the unsettled ones,
        // only one that ends badly.
        in_hand.sent(now).await.unwrap();
        claim_to_send(&store, &deferred)
            .await
            .fail("550 gone")
            .await
            .unwrap();
        let next = outgoing("digest:run-2", "digest", "it@acme.example");
        let (_, problems) = store.claim_digest(&next, now).await.unwrap();
        let ids: Vec<_> = problems
            .iter()
            .map(|p| (p.id.as_str(), p.state.as_str()))
            .collect();
        assert_eq!(ids, [(deferred.id, "failed")]);
    })
    .await;
}

#[tokio::test]
async fn a_standing_error_is_opened_once_and_resolved_once() {
    in_fresh_database(|url| async move {
        let store = connect_store(&url).await;
        let now = chrono::Utc::now();
        let (first, second, success) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let opened = store
            .open_standing_error("acme", "entra.7000222", first, Some("secret expired"), now)
            .await
            .unwrap();
        assert_eq!(opened.opened_run, first);
        let again = store
            .open_standing_error("acme", "entra.7000222", second, Some("still expired"), now)
            .await
            .unwrap();
        assert_eq!(again.opened_run, first, "the same episode");
        assert_eq!(again.last_error.as_deref(), Some("still expired"));

        let resolved = store.resolve_standing_errors("acme", success).await.unwrap();
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].error_code, "entra.7000222");
        // A redelivered success finds the same; another run finds none.
        assert_eq!(
            store.resolve_standing_errors("acme", success).await.unwrap(),
            resolved
        );
        assert!(store
            .resolve_standing_errors("acme", Uuid::new_v4())
            .await
            .unwrap()
            .is_empty());

        // A new failure opens a new episode.
        let third = Uuid::new_v4();
        let reopened = store
            .open_standing_error("acme", "entra.7000222", third, None, now)
            .await
            .unwrap();
        assert_eq!(reopened.opened_run, third);

        // A run's digest is decided once.
        let run = Uuid::new_v4();
        assert_eq!(
            store.digest_mail_id(run, "error:day-1").await.unwrap(),
            "error:day-1"
        );
        assert_eq!(
            store.digest_mail_id(run, "error:day-2").await.unwrap(),
            "error:day-1"
        );
    })
    .await;
}

#[tokio::test]
async fn a_create_key_moves_on_only_with_a_committed_answer_and_a_conflict_is_kept_until_created() {
    in_fresh_database(|url| async move {
        use usersync_store::{ChangeEnd, ChangeRecord, CreateAnswers, CreateConflict, LockedUser, UserToLock};
        let store = store_with_tenant(&url, "acme").await;
        let run = Uuid::new_v4();
        store.start_run(run, "acme", "manual", false).await.expect("a run");
        let mut client = store.client().await.expect("a connection");
        client
            .batch_execute(&format!(
                "INSERT INTO sync_users (tenant_id, object_id, state, desired_version) VALUES ('acme', 'obj-1', 'active', 1);
                 INSERT INTO run_changes (run_id, object_id, desired_version, action, batch) VALUES ('{run}', 'obj-1', 1, '\"None\"', 0);
                 INSERT INTO run_batches (run_id, batch, changes, pending) VALUES ('{run}', 0, 1, 1);
                 UPDATE runs SET batches = 1 WHERE id = '{run}';
                 INSERT INTO directory_users (tenant_id, object_id, source, removed) VALUES
                   ('acme', 'obj-2', '{{\"mailNickname\": \"bo.ek\"}}', false),
                   ('acme', 'obj-3', '{{\"mailNickname\": \"gone\"}}', true);"
            ))
            .await
            .expect("a user with a planned change");
        let conflict = CreateConflict {
            holder_id: "p-9".into(),
            field: "pstn_fixed".into(),
        };
        async fn lock(tx: &deadpool_postgres::Transaction<'_>, run: Uuid) -> LockedUser {
            let user = UserToLock {
                object_id: "obj-1",
                match_value: None,
            };
            let mut locked = Store::lock_users(tx, run, "acme", &[user]).await.unwrap();
            locked.remove("obj-1").expect("locked")
        }
        async fn answered(tx: &deadpool_postgres::Transaction<'_>, conflict: &CreateConflict) {
            let answers = CreateAnswers {
                object_id: "obj-1",
                answers: 1,
                conflict: Some(conflict.clone()),
            };
            Store::record_create_answers(tx, "acme", &[answers]).await.unwrap();
        }

        // Answered, then a crash before the commit: the same key next time.
        let tx = client.transaction().await.unwrap();
        let locked = lock(&tx, run).await;
        assert_eq!((locked.create_generation, locked.create_conflict), (0, None));
        answered(&tx, &conflict).await;
        drop(tx);
        let tx = client.transaction().await.unwrap();
        let locked = lock(&tx, run).await;
        assert_eq!((locked.create_generation, locked.create_conflict), (0, None));

        // Committed with the change: a new key, and the holder to re-check.
        answered(&tx, &conflict).await;
        tx.commit().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let locked = lock(&tx, run).await;
        assert_eq!(locked.create_generation, 1);
        assert_eq!(locked.create_conflict.as_ref(), Some(&conflict));
        assert_eq!(
            Store::directory_user_name(&tx, "acme", "obj-2").await.unwrap().as_deref(),
            Some("bo.ek")
        );
        for stranger in ["obj-3", "another-directory-user"] {
            assert_eq!(
                Store::directory_user_name(&tx, "acme", stranger).await.unwrap(),
                None,
                "{stranger}"
            );
        }

        // Created at last, answered once more in the same step: the answer
        // counts on the row that links the user, and nothing is left to re-check.
        let fields = usersync_core::SyncedFields {
            alias: "asa".into(),
            first_name: "Åsa".into(),
            surname: "Öberg".into(),
            pstn_fixed: "46812345678".into(),
            email: None,
            attributes: Default::default(),
        };
        let created = ChangeRecord::Created {
            pbx_id: "p-1".into(),
            fields,
        };
        let end = ChangeEnd {
            object_id: "obj-1",
            desired_version: 1,
            record: created,
        };
        let answers = CreateAnswers {
            object_id: "obj-1",
            answers: 1,
            conflict: None,
        };
        Store::record_changes(&tx, run, "acme", &[end], &[answers]).await.unwrap();
        tx.commit().await.unwrap();
        let row = client
            .query_one(
                "SELECT create_generation, create_conflict IS NULL, pbx_id FROM sync_users WHERE object_id = 'obj-1'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 2);
        assert!(row.get::<_, bool>(1), "the conflict is forgotten once created");
        assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("p-1"));
    })
    .await;
}

#[tokio::test]
async fn the_stores_sessions_run_without_jit() {
    in_fresh_database(|url| async move {
        let store = connect_store(&url).await;
        let client = store.client().await.expect("a connection");
        let jit: String = client.query_one("SHOW jit", &[]).await.expect("SHOW jit").get(0);
        assert_eq!(jit, "off");
    })
    .await;
}
