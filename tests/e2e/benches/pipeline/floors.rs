//! The floors: what a plain client does with the same simulators and the same
//! SMTP server (for mail, a second smtp-sink started alike), with none of
//! usersync's bookkeeping, at the same concurrency.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use futures::{stream, TryStreamExt};
use lettre::{
    address::Envelope,
    transport::smtp::{client::AsyncSmtpConnection, extension::ClientId},
    Address,
};
use serde_json::{json, Value};
use usersync_e2e::sink::StoredMail;

/// A Graph simulator tenant's credentials, as the tenant file names them.
pub struct GraphTenant<'a> {
    pub sim: &'a str,
    pub tenant_id: &'a str,
    pub client_id: &'a str,
    pub secret: &'a str,
}

/// What the pipeline floor did.
pub struct PipelineFloor {
    pub secs: f64,
    pub posted: usize,
    /// The first users' object ids, in directory order (the change figure edits them).
    pub first_ids: Vec<String>,
}

/// Pages the users delta from scratch and POSTs every user to PBX company
/// `company`, `in_flight` POSTs at a time, pages read as the POSTs need them.
pub async fn pipeline(
    http: &reqwest::Client,
    graph: &GraphTenant<'_>,
    pbx: &str,
    pbx_token: &str,
    company: &str,
    in_flight: usize,
    keep_ids: usize,
) -> anyhow::Result<PipelineFloor> {
    let started = Instant::now();
    let token = graph_token(http, graph).await?;
    // The properties the tenant file maps, as the fetcher selects them.
    let first = format!(
        "{}/v1.0/users/delta?$select=id,accountEnabled,mailNickname,givenName,surname,businessPhones,mail",
        graph.sim
    );
    let pages = stream::try_unfold(Some(first), |next| {
        let token = token.clone();
        async move {
            let Some(url) = next else { return Ok(None) };
            let page: Value = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let next = page["@odata.nextLink"].as_str().map(str::to_owned);
            let users = page["value"].as_array().cloned().unwrap_or_default();
            anyhow::Ok(Some((stream::iter(users.into_iter().map(anyhow::Ok)), next)))
        }
    });
    let mut first_ids = Vec::new();
    let posted = pages
        .try_flatten()
        .inspect_ok(|user| {
            if first_ids.len() < keep_ids {
                first_ids.push(user["id"].as_str().unwrap_or_default().to_owned());
            }
        })
        .map_ok(|user| {
            let url = format!("{pbx}/v1/companies/{company}/users");
            async move {
                let id = user["id"].as_str().unwrap_or_default();
                let body = new_pbx_user(&user);
                let reply = http
                    .post(&url)
                    .bearer_auth(pbx_token)
                    .header("Idempotency-Key", format!("floor:{id}"))
                    .json(&body)
                    .send()
                    .await?;
                let status = reply.status();
                anyhow::ensure!(
                    status.is_success(),
                    "POST {body}: {status} {}",
                    reply.text().await.unwrap_or_default()
                );
                anyhow::Ok(())
            }
        })
        .try_buffer_unordered(in_flight)
        .try_fold(0, |count, ()| async move { Ok(count + 1) })
        .await?;
    Ok(PipelineFloor {
        secs: started.elapsed().as_secs_f64(),
        posted,
        first_ids,
    })
}

async fn graph_token(http: &reqwest::Client, graph: &GraphTenant<'_>) -> anyhow::Result<String> {
    let reply: Value = http
        .post(format!("{}/{}/oauth2/v2.0/token", graph.sim, graph.tenant_id))
        .form(&[
            ("client_id", graph.client_id),
            ("client_secret", graph.secret),
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    reply["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no access_token in {reply}"))
}

/// The user as the tenant file maps it (alias, names, fixed number, mail).
fn new_pbx_user(user: &Value) -> Value {
    let text = |key: &str| user[key].as_str().unwrap_or_default().to_owned();
    // The simulator's Swedish formats: +46 8…, 08-…, +46 (0)8…, 00468…
    let digits: String = user["businessPhones"][0]
        .as_str()
        .unwrap_or_default()
        .replace("(0)", "")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let pstn = match (digits.strip_prefix("00"), digits.strip_prefix('0')) {
        (Some(international), _) => international.to_owned(),
        (None, Some(national)) => format!("46{national}"),
        (None, None) => digits,
    };
    json!({
        "alias": text("mailNickname"), "first_name": text("givenName"), "surname": text("surname"),
        "pstn_fixed": pstn, "email": text("mail"), "caller_id": super::CALLER_ID,
        "template": "standard", "external_id": text("id"), "attributes": {}
    })
}

/// Sends `mails` again as smtp-sink stored them (the same envelope, the same
/// message) to the SMTP server on `port`: `connections` sessions, each with a
/// send in flight, as the notifier's pool has. lettre's own connections, on
/// TCP sockets without Nagle's delay as the notifier's are (lettre writes the
/// final dot apart from the data). Returns how many it sent.
pub async fn smtp(mails: &[StoredMail], port: u16, connections: usize) -> anyhow::Result<usize> {
    let mut messages = Vec::with_capacity(mails.len());
    for mail in mails {
        let from = mail.from.as_deref().map(str::parse::<Address>).transpose()?;
        let to = mail
            .to
            .iter()
            .map(|to| to.parse::<Address>())
            .collect::<Result<Vec<_>, _>>()?;
        messages.push((Envelope::new(from, to)?, mail.message.clone().into_bytes()));
    }
    let messages = Arc::new(messages);
    let next = Arc::new(AtomicUsize::new(0));
    let sessions: Vec<_> = (0..connections)
        .map(|_| {
            let (messages, next) = (Arc::clone(&messages), Arc::clone(&next));
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                stream.set_nodelay(true)?;
                let mut session =
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), &ClientId::default())
                        .await?;
                while let Some((envelope, message)) = messages.get(next.fetch_add(1, Ordering::Relaxed)) {
                    session.send(envelope, message).await?;
                }
                session.quit().await?;
                anyhow::Ok(())
            })
        })
        .collect();
    for session in sessions {
        session.await??;
    }
    Ok(messages.len())
}
