//! The notifier's outbox: every mail by deterministic id and where it got to,
//! the run → digest decision, and the standing errors of each tenant.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::mail_locks::HeldLock;
use crate::mail_marks::{MailMarks, Mark, Write};
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
#[derive(Debug)]
pub enum Claim {
    /// This attempt owns the mail and must send it.
    Send(MailClaim),
    /// Nothing to do: the mail is `sent`, `failed`, `uncertain` or `no_address`.
    Settled { state: String },
    /// A live attempt holds the mail: another process's lock session holds
    /// the claim, or this process is sending the mail already.
    InFlight,
    /// An attempt died after the message data started going to the server:
    /// the server may have the mail, so it is marked `uncertain`, not resent.
    Abandoned,
}

/// A claimed mail. The claim is the mail's advisory lock on the process's
/// lock session (see [`crate::mail_locks`]), held until the mail is settled:
/// if the process dies, its session ends and the next attempt takes the mail
/// over at once. Dropped unsettled (a cancelled send), it releases the lock.
/// Every write of the claim names its attempt, so an attempt whose claim
/// was taken over changes nothing.
pub struct MailClaim {
    marks: Arc<MailMarks>,
    /// `None` once released.
    lock: Option<HeldLock>,
    id: String,
    attempt: i32,
}

impl fmt::Debug for MailClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailClaim")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl MailClaim {
    /// Counts from 1.
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn lock(&self) -> &HeldLock {
        self.lock.as_ref().expect("an unsettled claim holds its lock")
    }

    /// Committed just before the message data goes to the server: from here
    /// a dead attempt leaves the mail `uncertain`, never sent twice. False,
    /// and nothing recorded, when the claim is no longer this attempt's: its
    /// lock session ended (the lock is checked in the same statement) or
    /// another attempt took the mail over. Then no data may go out.
    pub async fn transmitting(&mut self) -> Result<bool> {
        if self.lock().is_lost() {
            // Known without asking: the session and its locks are gone
            // (another attempt may own the mail now).
            tracing::warn!(mail = %self.id, attempt = self.attempt,
                "the session holding this mail's claim was lost before its data went out: not sent by this attempt");
            return Ok(false);
        }
        let marked = self
            .marks
            .write(Mark {
                id: self.id.clone(),
                attempt: self.attempt,
                write: Write::Transmitting {
                    pid: self.lock().pid(),
                },
            })
            .await
            .with_context(|| format!("marking mail {} transmitting", self.id))?;
        if !marked {
            tracing::warn!(mail = %self.id, attempt = self.attempt,
                "the claim on this mail was lost before its data went out (its lock session ended, or another attempt took it over): not sent by this attempt");
        }
        Ok(marked)
    }

    /// The SMTP server accepted the mail.
    pub async fn sent(self, now: DateTime<Utc>) -> Result<()> {
        self.settle("sent", None, Some(now)).await
    }

    /// A temporary failure before the server took the message: the next
    /// attempt may claim it again.
    pub async fn release(self, reply: &str) -> Result<()> {
        self.settle("pending", Some(reply), None).await
    }

    /// Refused for good (5xx, bad address): recorded with the reply, never retried.
    pub async fn fail(self, reply: &str) -> Result<()> {
        self.settle("failed", Some(reply), None).await
    }

    /// The data went out but no reply came: the server may have the mail.
    pub async fn uncertain(self, reply: &str) -> Result<()> {
        self.settle("uncertain", Some(reply), None).await
    }

    /// Records the outcome, then unlocks. Only this attempt's row changes: a
    /// mail another attempt claimed since keeps that attempt's state; one
    /// marked `uncertain` because this attempt's session was lost mid-send
    /// gets the outcome this attempt saw.
    async fn settle(
        mut self,
        state: &'static str,
        reply: Option<&str>,
        sent_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        // Committed before the unlock, so the next holder of the lock sees the outcome.
        let settled = self
            .marks
            .write(Mark {
                id: self.id.clone(),
                attempt: self.attempt,
                write: Write::Settle {
                    state,
                    reply: reply.map(str::to_owned),
                    sent_at,
                },
            })
            .await
            .with_context(|| format!("marking mail {} {state}", self.id))?;
        if !settled {
            tracing::warn!(mail = %self.id, attempt = self.attempt, state,
                "another attempt took this mail over: this attempt's outcome is not recorded");
        }
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        Ok(())
    }
}

/// A welcome mail that did not reach its user, for the tenant's next digest.
#[derive(Debug, Clone, PartialEq)]
pub struct MailProblem {
    pub id: String,
    pub kind: String,
    /// `failed`, `uncertain` or `no_address`; for a digest also `sending`,
    /// `transmitting` or `pending` (see [`MailProblem::is_unsettled`]).
    pub state: String,
    pub recipient: String,
    pub reply: Option<String>,
    pub detail: Value,
}

impl MailProblem {
    /// Still claimed, being transmitted or waiting for a retry.
    pub fn is_unsettled(&self) -> bool {
        matches!(self.state.as_str(), "sending" | "transmitting" | "pending")
    }
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

/// States of a mail not settled yet, which a digest names without taking.
const UNSETTLED_STATES: &str = "('sending', 'transmitting', 'pending')";
/// Only mails to users are reported; a refused digest is logged, not mailed to the same address.
/// (The states reported are the column `to_report`: not reported yet, and
/// `failed`, `uncertain` or `no_address`; V21.)
const REPORTED_KINDS: &str = "('welcome', 'welcome_copy')";

impl Store {
    /// Takes a mail for sending at `now`, unless it was sent or settled
    /// already or a live attempt holds it.
    pub async fn claim_mail(&self, mail: &NewMail<'_>, now: DateTime<Utc>) -> Result<Claim> {
        let mut claims = self.claim_mails(std::slice::from_ref(mail), now).await?;
        Ok(claims.pop().expect("one claim per mail"))
    }

    /// As [`Store::claim_mail`] for each of `mails` (distinct ids), in two
    /// statements: their locks, then their rows. One claim per mail, in order.
    pub async fn claim_mails(&self, mails: &[NewMail<'_>], now: DateTime<Utc>) -> Result<Vec<Claim>> {
        let ids: Vec<&str> = mails.iter().map(|mail| mail.id).collect();
        let locks = self.mail_locks.claim_many(&ids).await?;
        let locked: Vec<NewMail<'_>> = mails
            .iter()
            .zip(&locks)
            .filter(|(_, lock)| lock.is_some())
            .map(|(mail, _)| mail.clone())
            .collect();
        // From here a failure drops the locks, which releases them.
        let mut found = Vec::new();
        if !locked.is_empty() {
            let mut client = self.client().await?;
            let tx = claim_transaction(&mut client).await?;
            found = claim_in(&tx, &locked, now).await?;
            tx.commit().await.context("claiming mails")?;
        }
        let mut found = found.into_iter();
        let mut claims = Vec::with_capacity(mails.len());
        for (mail, lock) in mails.iter().zip(locks) {
            claims.push(match lock {
                Some(lock) => {
                    let found = found.next().expect("one answer per locked mail");
                    self.finish_claim(lock, mail, found).await
                }
                None => Claim::InFlight,
            });
        }
        Ok(claims)
    }

    /// Claims a digest and, in the same transaction, takes every unreported
    /// mail problem of the tenant into it. Returns the claim and the problems
    /// the digest reports (also those taken by an earlier, failed attempt),
    /// then the welcome mails of the run not settled yet (`sending`,
    /// `transmitting`, `pending`): named, not taken, so they are reported
    /// again only if they end badly.
    pub async fn claim_digest(
        &self,
        mail: &NewMail<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Claim, Vec<MailProblem>)> {
        let Some(lock) = self.mail_locks.claim(mail.id).await? else {
            return Ok((Claim::InFlight, Vec::new()));
        };
        let mut client = self.client().await?;
        let tx = claim_transaction(&mut client).await?;
        let found = claim_in(&tx, std::slice::from_ref(mail), now)
            .await?
            .pop()
            .expect("one answer per mail");
        let mut problems = Vec::new();
        if found.is_ok() {
            tx.execute(
                &format!(
                    "UPDATE mails SET reported_in = $2
                     WHERE tenant_id = $1 AND to_report AND kind IN {REPORTED_KINDS}"
                ),
                &[&mail.tenant_id, &mail.id],
            )
            .await
            .context("taking mail problems into the digest")?;
            problems = problems_where(&tx, "reported_in = $1", &[&mail.id]).await?;
            problems.extend(
                problems_where(
                    &tx,
                    &format!("run_id = $1 AND state IN {UNSETTLED_STATES} AND kind IN {REPORTED_KINDS}"),
                    &[&mail.run_id],
                )
                .await?,
            );
        }
        tx.commit().await.context("committing the digest claim")?;
        drop(client);
        Ok((self.finish_claim(lock, mail, found).await, problems))
    }

    /// `found` is what [`claim_in`] made of the row: this attempt's number
    /// when it now owns the mail; otherwise the lock is given up.
    async fn finish_claim(
        &self,
        lock: HeldLock,
        mail: &NewMail<'_>,
        found: std::result::Result<i32, Claim>,
    ) -> Claim {
        match found {
            Ok(attempt) => Claim::Send(MailClaim {
                marks: Arc::clone(&self.mail_marks),
                lock: Some(lock),
                id: mail.id.to_owned(),
                attempt,
            }),
            Err(other) => {
                lock.release().await;
                other
            }
        }
    }

    /// The tenant's mail problems no digest has reported yet (to decide
    /// whether a run at level `warning` needs a digest at all).
    pub async fn unreported_mail_problems(&self, tenant_id: &str) -> Result<Vec<MailProblem>> {
        let client = self.client().await?;
        problems_where(
            &client,
            &format!("tenant_id = $1 AND to_report AND kind IN {REPORTED_KINDS}"),
            &[&tenant_id],
        )
        .await
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

/// The transaction a claim is recorded in. Its commit does not wait for the
/// disk (`synchronous_commit` off): nothing has gone to the server yet, and the
/// `transmitting` commit before any data flushes it along. A claim lost with a
/// database crash only means the mail is sent by the next attempt. This keeps
/// a mail at two flushed commits (`transmitting`, then its outcome).
async fn claim_transaction(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>> {
    let tx = client.transaction().await.context("starting a transaction")?;
    tx.batch_execute("SET LOCAL synchronous_commit TO off")
        .await
        .context("starting a transaction")?;
    Ok(tx)
}

/// With the mails' locks held: a row left `sending` belongs to an attempt
/// whose session ended before any data went out, so it is sent again; one
/// left `transmitting` may have reached the server, so it becomes `uncertain`.
/// One answer per mail, in order: this attempt's number, or what else it is.
async fn claim_in(
    client: &deadpool_postgres::Transaction<'_>,
    mails: &[NewMail<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<std::result::Result<i32, Claim>>> {
    let claim = client
        .prepare_cached(
            "INSERT INTO mails (id, tenant_id, kind, recipient, run_id, state, attempts, claimed_at, detail)
             SELECT id, tenant_id, kind, recipient, run_id, 'sending', 1, $6, detail
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[], $7::jsonb[])
                  AS mail (id, tenant_id, kind, recipient, run_id, detail)
             ON CONFLICT (id) DO UPDATE
               SET state = 'sending', attempts = mails.attempts + 1, claimed_at = EXCLUDED.claimed_at
               WHERE mails.state IN ('pending', 'sending')
             RETURNING id, attempts",
        )
        .await
        .context("preparing to claim mails")?;
    let ids: Vec<&str> = mails.iter().map(|mail| mail.id).collect();
    let tenants: Vec<&str> = mails.iter().map(|mail| mail.tenant_id).collect();
    let kinds: Vec<&str> = mails.iter().map(|mail| mail.kind).collect();
    let recipients: Vec<&str> = mails.iter().map(|mail| mail.recipient).collect();
    let runs: Vec<Option<Uuid>> = mails.iter().map(|mail| mail.run_id).collect();
    let details: Vec<Json<&Value>> = mails.iter().map(|mail| Json(&mail.detail)).collect();
    let claimed: HashMap<String, i32> = client
        .query(
            &claim,
            &[&ids, &tenants, &kinds, &recipients, &runs, &now, &details],
        )
        .await
        .context("claiming mails")?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut states = HashMap::new();
    if claimed.len() < mails.len() {
        let others: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !claimed.contains_key(*id))
            .collect();
        states = client
            .query("SELECT id, state FROM mails WHERE id = ANY($1)", &[&others])
            .await
            .context("reading claimed mails")?
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
            .collect();
        let abandoned: Vec<&str> = others
            .iter()
            .copied()
            .filter(|id| states.get(*id).is_some_and(|state| state == "transmitting"))
            .collect();
        if !abandoned.is_empty() {
            client
                .execute(
                    "UPDATE mails SET state = 'uncertain',
                            reply = 'the sending attempt stopped after the message data went out, before the server''s answer was recorded'
                     WHERE id = ANY($1)",
                    &[&abandoned],
                )
                .await
                .context("marking abandoned mails uncertain")?;
        }
    }
    ids.iter()
        .map(|id| match (claimed.get(*id), states.remove(*id)) {
            (Some(attempt), _) => Ok(Ok(*attempt)),
            (None, Some(state)) if state == "transmitting" => Ok(Err(Claim::Abandoned)),
            (None, Some(state)) => Ok(Err(Claim::Settled { state })),
            (None, None) => Err(anyhow::anyhow!("mail {id} vanished while it was claimed")),
        })
        .collect()
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
