//! The notifier's outbox: every mail by deterministic id and where it got to,
//! the run → digest decision, and the standing errors of each tenant.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::{Result, Store};

/// A mail the notifier means to send.
#[derive(Debug, Clone)]
pub struct NewMail<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    /// `welcome`, `welcome_copy`, `digest`, `resolved`, `secret_expiry`.
    pub kind: &'a str,
    pub recipient: &'a str,
    pub run_id: Option<Uuid>,
    /// What a later digest needs to name the mail (user, alias, …).
    pub detail: Value,
}

/// What [`Store::claim_mail`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This attempt owns the mail and must send it (`attempt` counts from 1).
    Send { attempt: i32 },
    /// Nothing to do: the mail is `sent`, `failed`, `uncertain` or `no_address`.
    Settled { state: String },
    /// Another attempt claimed it within the lease and may still be sending.
    InFlight,
    /// An attempt claimed it and never came back (the process died mid-send):
    /// the server may have the mail, so it is marked `uncertain`, not resent.
    Abandoned,
}

/// A welcome mail that did not reach its user, for the tenant's next digest.
#[derive(Debug, Clone, PartialEq)]
pub struct MailProblem {
    pub id: String,
    pub kind: String,
    /// `failed`, `uncertain` or `no_address`.
    pub state: String,
    pub recipient: String,
    pub reply: Option<String>,
    pub detail: Value,
}

/// A run failure that stands until a later run completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandingError {
    pub error_code: String,
    /// The first failing run of the episode.
    pub opened_run: Uuid,
    pub opened_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// States whose mails a digest reports.
const REPORTED_STATES: &str = "('failed', 'uncertain', 'no_address')";
/// Only mails to users are reported; a refused digest is logged, not mailed to the same address.
const REPORTED_KINDS: &str = "('welcome', 'welcome_copy')";

impl Store {
    /// Takes a mail for sending at `now`, unless it was sent or settled
    /// already. A claim older than `lease` belongs to an attempt that died.
    pub async fn claim_mail(&self, mail: &NewMail<'_>, now: DateTime<Utc>, lease: Duration) -> Result<Claim> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("starting a transaction")?;
        let claim = claim_in(&tx, mail, now, lease).await?;
        tx.commit().await.context("claiming the mail")?;
        Ok(claim)
    }

    /// Claims a digest and, in the same transaction, takes every unreported
    /// mail problem of the tenant into it. Returns the claim and the problems
    /// the digest reports (also those taken by an earlier, failed attempt).
    pub async fn claim_digest(
        &self,
        mail: &NewMail<'_>,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<(Claim, Vec<MailProblem>)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("starting a transaction")?;
        let claim = claim_in(&tx, mail, now, lease).await?;
        if !matches!(claim, Claim::Send { .. }) {
            tx.commit().await.context("committing the digest claim")?;
            return Ok((claim, Vec::new()));
        }
        tx.execute(
            &format!(
                "UPDATE mails SET reported_in = $2
                 WHERE tenant_id = $1 AND reported_in IS NULL
                   AND state IN {REPORTED_STATES} AND kind IN {REPORTED_KINDS}"
            ),
            &[&mail.tenant_id, &mail.id],
        )
        .await
        .context("taking mail problems into the digest")?;
        let problems = problems_where(&tx, "reported_in = $1", &[&mail.id]).await?;
        tx.commit().await.context("committing the digest claim")?;
        Ok((claim, problems))
    }

    /// The tenant's mail problems no digest has reported yet (to decide
    /// whether a run at level `warning` needs a digest at all).
    pub async fn unreported_mail_problems(&self, tenant_id: &str) -> Result<Vec<MailProblem>> {
        let client = self.client().await?;
        problems_where(
            &client,
            &format!("tenant_id = $1 AND reported_in IS NULL AND state IN {REPORTED_STATES} AND kind IN {REPORTED_KINDS}"),
            &[&tenant_id],
        )
        .await
    }

    /// The SMTP server accepted the mail.
    pub async fn mark_mail_sent(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        self.settle(id, "sent", None, Some(now)).await
    }

    /// A temporary failure: the mail may be claimed again by the next attempt.
    pub async fn release_mail(&self, id: &str, reply: &str) -> Result<()> {
        self.settle(id, "pending", Some(reply), None).await
    }

    /// Refused for good (5xx, bad address): recorded with the reply, never retried.
    pub async fn fail_mail(&self, id: &str, reply: &str) -> Result<()> {
        self.settle(id, "failed", Some(reply), None).await
    }

    async fn settle(
        &self,
        id: &str,
        state: &str,
        reply: Option<&str>,
        sent_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE mails SET state = $2, reply = coalesce($3, reply), sent_at = $4 WHERE id = $1",
                &[&id, &state, &reply, &sent_at],
            )
            .await
            .with_context(|| format!("marking mail {id} {state}"))?;
        Ok(())
    }

    /// A mail that had nowhere to go; reported in the tenant's next digest.
    /// Returns false when it was recorded already.
    pub async fn record_mail_without_address(&self, mail: &NewMail<'_>) -> Result<bool> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO mails (id, tenant_id, kind, recipient, run_id, state, detail)
                 VALUES ($1, $2, $3, '', $4, 'no_address', $5) ON CONFLICT (id) DO NOTHING",
                &[
                    &mail.id,
                    &mail.tenant_id,
                    &mail.kind,
                    &mail.run_id,
                    &Json(&mail.detail),
                ],
            )
            .await
            .context("recording a mail without an address")?;
        Ok(inserted == 1)
    }

    /// The state of a mail, if it was ever planned.
    pub async fn mail_state(&self, id: &str) -> Result<Option<String>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT state FROM mails WHERE id = $1", &[&id])
            .await
            .context("reading a mail's state")?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Which mail reports `run_id`: the first decision stands, so a
    /// redelivered event (even on another day) maps to the same mail.
    pub async fn digest_mail_id(&self, run_id: Uuid, proposed: &str) -> Result<String> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO run_digests (run_id, mail_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&run_id, &proposed],
            )
            .await
            .context("recording the run's digest")?;
        let row = client
            .query_one("SELECT mail_id FROM run_digests WHERE run_id = $1", &[&run_id])
            .await
            .context("reading the run's digest")?;
        Ok(row.get(0))
    }

    /// Records a failed run under its error code; returns the standing
    /// error's episode (opened by the first failing run until it is resolved).
    pub async fn open_standing_error(
        &self,
        tenant_id: &str,
        error_code: &str,
        run_id: Uuid,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<StandingError> {
        let client = self.client().await?;
        // A redelivered event of the run that opened an episode finds it, resolved or not.
        let own = client
            .query_opt(
                "SELECT error_code, opened_run, opened_at, last_error FROM standing_errors
                 WHERE tenant_id = $1 AND error_code = $2 AND opened_run = $3",
                &[&tenant_id, &error_code, &run_id],
            )
            .await
            .context("reading a standing error")?;
        if let Some(row) = own {
            return Ok(standing_error(&row));
        }
        let row = client
            .query_one(
                "INSERT INTO standing_errors (tenant_id, error_code, opened_run, opened_at, last_error)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant_id, error_code) WHERE resolved_run IS NULL
                 DO UPDATE SET last_error = EXCLUDED.last_error
                 RETURNING error_code, opened_run, opened_at, last_error",
                &[&tenant_id, &error_code, &run_id, &now, &error],
            )
            .await
            .context("recording a standing error")?;
        Ok(standing_error(&row))
    }

    /// A run of the tenant completed: every open standing error is resolved by
    /// it. Returns them (also on a redelivery of the same run's event).
    pub async fn resolve_standing_errors(&self, tenant_id: &str, run_id: Uuid) -> Result<Vec<StandingError>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "UPDATE standing_errors SET resolved_run = $2
                 WHERE tenant_id = $1 AND (resolved_run IS NULL OR resolved_run = $2)
                 RETURNING error_code, opened_run, opened_at, last_error",
                &[&tenant_id, &run_id],
            )
            .await
            .context("resolving standing errors")?;
        Ok(rows.iter().map(standing_error).collect())
    }
}

async fn claim_in(
    tx: &deadpool_postgres::Transaction<'_>,
    mail: &NewMail<'_>,
    now: DateTime<Utc>,
    lease: Duration,
) -> Result<Claim> {
    let claimed = tx
        .query_opt(
            "INSERT INTO mails (id, tenant_id, kind, recipient, run_id, state, attempts, claimed_at, detail)
             VALUES ($1, $2, $3, $4, $5, 'sending', 1, $6, $7)
             ON CONFLICT (id) DO UPDATE
               SET state = 'sending', attempts = mails.attempts + 1, claimed_at = EXCLUDED.claimed_at
               WHERE mails.state = 'pending'
             RETURNING attempts",
            &[
                &mail.id,
                &mail.tenant_id,
                &mail.kind,
                &mail.recipient,
                &mail.run_id,
                &now,
                &Json(&mail.detail),
            ],
        )
        .await
        .context("claiming a mail")?;
    if let Some(row) = claimed {
        return Ok(Claim::Send { attempt: row.get(0) });
    }
    let row = tx
        .query_one(
            "SELECT state, claimed_at FROM mails WHERE id = $1 FOR UPDATE",
            &[&mail.id],
        )
        .await
        .context("reading a claimed mail")?;
    let state: String = row.get(0);
    let claimed_at: Option<DateTime<Utc>> = row.get(1);
    if state != "sending" {
        return Ok(Claim::Settled { state });
    }
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    if claimed_at.is_some_and(|at| now < at + lease) {
        return Ok(Claim::InFlight);
    }
    tx.execute(
        "UPDATE mails SET state = 'uncertain',
                reply = 'the sending attempt stopped before the server''s answer was recorded'
         WHERE id = $1",
        &[&mail.id],
    )
    .await
    .context("marking an abandoned mail uncertain")?;
    Ok(Claim::Abandoned)
}

async fn problems_where(
    client: &impl GenericClient,
    condition: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<MailProblem>> {
    let rows = client
        .query(
            &format!(
                "SELECT id, kind, state, recipient, reply, detail FROM mails WHERE {condition} ORDER BY id"
            ),
            params,
        )
        .await
        .context("listing mail problems")?;
    Ok(rows
        .iter()
        .map(|row| {
            let Json(detail): Json<Value> = row.get("detail");
            MailProblem {
                id: row.get("id"),
                kind: row.get("kind"),
                state: row.get("state"),
                recipient: row.get("recipient"),
                reply: row.get("reply"),
                detail,
            }
        })
        .collect())
}

fn standing_error(row: &tokio_postgres::Row) -> StandingError {
    StandingError {
        error_code: row.get("error_code"),
        opened_run: row.get("opened_run"),
        opened_at: row.get("opened_at"),
        last_error: row.get("last_error"),
    }
}
