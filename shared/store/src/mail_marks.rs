//! The writes of the sends in flight, committed together. Every send marks
//! its mail `transmitting` before the data goes out and records its outcome
//! after the reply, each a commit that waits for the disk. Sends in flight at
//! once hand these writes to one writer, which commits all that are waiting
//! in one statement per kind (a group commit): a mail costs a share of two
//! flushed commits, not two of its own, and each send still waits for its
//! own write to be durable before it goes on. A group whose statement fails
//! is written again one mail at a time, so each send gets its own answer
//! (an outage stays an outage, a bad row fails only its own send).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::types::Type;

use crate::db::pooled;
use crate::mail_locks::MAIL_LOCKS;
use crate::Result;

/// Writes taken into one statement at most.
const MAX_GROUP: usize = 512;
/// Groups being committed at once: a mark that arrives while a group waits
/// for the disk starts the next group instead of waiting for that one
/// (PostgreSQL flushes concurrent commits together too). Leaves most of the
/// pool to the claims.
const GROUPS_AT_ONCE: usize = 3;

/// One send's write of its claim (its attempt only).
pub(crate) struct Mark {
    pub(crate) id: String,
    pub(crate) attempt: i32,
    pub(crate) write: Write,
}

pub(crate) enum Write {
    /// To `transmitting`, only while the lock session `pid` holds the mail's lock.
    Transmitting { pid: i32 },
    /// The outcome: `sent`, `pending`, `failed` or `uncertain`.
    Settle {
        state: &'static str,
        reply: Option<String>,
        sent_at: Option<DateTime<Utc>>,
    },
}

impl Write {
    fn is_transmitting(&self) -> bool {
        matches!(self, Write::Transmitting { .. })
    }
}

struct Queued {
    mark: Mark,
    /// Whether the row changed (it was still this attempt's).
    done: oneshot::Sender<Result<bool>>,
}

/// The writer of one process's marks (one [`crate::Store`] and its clones).
pub(crate) struct MailMarks {
    pool: deadpool_postgres::Pool,
    /// Started with the first mark, so services that send no mail run none.
    queue: OnceLock<mpsc::UnboundedSender<Queued>>,
}

impl MailMarks {
    pub(crate) fn new(pool: deadpool_postgres::Pool) -> MailMarks {
        MailMarks {
            pool,
            queue: OnceLock::new(),
        }
    }

    /// Writes `mark` with whatever other marks are waiting; true when the
    /// row changed.
    pub(crate) async fn write(&self, mark: Mark) -> Result<bool> {
        let queue = self.queue.get_or_init(|| {
            let (queue, waiting) = mpsc::unbounded_channel();
            tokio::spawn(write_groups(self.pool.clone(), waiting));
            queue
        });
        let (done, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(queued)) = queue.send(Queued { mark, done }) {
            // The writer is gone with its runtime: on our own.
            return write_alone(&self.pool, queued.mark).await;
        }
        answer.await.context("the writer of mail marks stopped")?
    }
}

/// Takes every mark waiting, writes them in one statement per kind, answers
/// each, and so on, up to [`GROUPS_AT_ONCE`] groups at a time.
async fn write_groups(pool: deadpool_postgres::Pool, mut waiting: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(GROUPS_AT_ONCE));
    let mut group = Vec::new();
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the writer never closes its semaphore");
        if waiting.recv_many(&mut group, MAX_GROUP).await == 0 {
            return;
        }
        let (transmitting, settles): (Vec<_>, Vec<_>) = group
            .drain(..)
            .partition(|queued| queued.mark.write.is_transmitting());
        let pool = pool.clone();
        tokio::spawn(async move {
            tokio::join!(write_group(&pool, transmitting), write_group(&pool, settles));
            drop(slot);
        });
    }
}

async fn write_group(pool: &deadpool_postgres::Pool, group: Vec<Queued>) {
    if group.is_empty() {
        return;
    }
    let marks: Vec<&Mark> = group.iter().map(|queued| &queued.mark).collect();
    match write_marks(pool, &marks).await {
        Ok(changed) => {
            for queued in group {
                let _ = queued.done.send(Ok(changed.contains(&queued.mark.id)));
            }
        }
        Err(_) => {
            for queued in group {
                let _ = queued.done.send(write_alone(pool, queued.mark).await);
            }
        }
    }
}

async fn write_alone(pool: &deadpool_postgres::Pool, mark: Mark) -> Result<bool> {
    let changed = write_marks(pool, &[&mark]).await?;
    Ok(changed.contains(&mark.id))
}

/// Marks of one kind in one statement; returns the ids whose row changed.
/// The statements are planned anew each time, never cached on the
/// connection: a cached plan is made generic after a few runs, and one made
/// while the outbox was small scans it whole (a hash join over a sequential
/// scan), and PostgreSQL keeps it however large the table grows, as nothing
/// analyses it here. In a 200,000-mail first sync the marks then took 20 ms
/// each, more and more as the outbox grew; planned per run they are index
/// look-ups. Sent typed, as one unnamed statement: parse, plan and run in one
/// round trip, not a prepare's round trip first, on every send's path.
async fn write_marks(pool: &deadpool_postgres::Pool, marks: &[&Mark]) -> Result<HashSet<String>> {
    let client = pooled(pool).await?;
    let ids: Vec<&str> = marks.iter().map(|mark| mark.id.as_str()).collect();
    let attempts: Vec<i32> = marks.iter().map(|mark| mark.attempt).collect();
    let rows = if marks[0].write.is_transmitting() {
        let pids: Vec<i32> = marks
            .iter()
            .map(|mark| match mark.write {
                Write::Transmitting { pid } => pid,
                Write::Settle { .. } => unreachable!("a group holds one kind of mark"),
            })
            .collect();
        // The lock is checked in the same statement: a claim whose session
        // ended (its locks with it) may not start transmitting.
        client
            .query_typed(
                "UPDATE mails SET state = 'transmitting'
                 FROM unnest($1::text[], $2::int4[], $3::int4[]) AS mark (id, attempt, pid)
                 WHERE mails.id = mark.id AND mails.state = 'sending' AND mails.attempts = mark.attempt
                   AND (mark.pid, hashtext(mark.id)::oid) IN (
                       SELECT pid, objid FROM pg_locks
                       WHERE locktype = 'advisory' AND granted AND objsubid = 2
                         AND classid = $4::int4::oid)
                 RETURNING mails.id",
                &[
                    (&ids, Type::TEXT_ARRAY),
                    (&attempts, Type::INT4_ARRAY),
                    (&pids, Type::INT4_ARRAY),
                    (&MAIL_LOCKS, Type::INT4),
                ],
            )
            .await
            .context("marking mails transmitting")?
    } else {
        let mut states = Vec::with_capacity(marks.len());
        let mut replies = Vec::with_capacity(marks.len());
        let mut sent_at = Vec::with_capacity(marks.len());
        for mark in marks {
            let Write::Settle {
                state,
                reply,
                sent_at: at,
            } = &mark.write
            else {
                unreachable!("a group holds one kind of mark")
            };
            states.push(*state);
            replies.push(reply.as_deref());
            sent_at.push(*at);
        }
        // A mail another attempt claimed since keeps that attempt's state;
        // one made `uncertain` because this attempt's session was lost
        // mid-send gets the outcome this attempt saw.
        client
            .query_typed(
                "UPDATE mails SET state = mark.state, reply = coalesce(mark.reply, mails.reply),
                                  sent_at = mark.sent_at
                 FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::timestamptz[])
                      AS mark (id, attempt, state, reply, sent_at)
                 WHERE mails.id = mark.id AND mails.attempts = mark.attempt
                   AND mails.state IN ('sending', 'transmitting', 'uncertain')
                 RETURNING mails.id",
                &[
                    (&ids, Type::TEXT_ARRAY),
                    (&attempts, Type::INT4_ARRAY),
                    (&states, Type::TEXT_ARRAY),
                    (&replies, Type::TEXT_ARRAY),
                    (&sent_at, Type::TIMESTAMPTZ_ARRAY),
                ],
            )
            .await
            .context("settling mails")?
    };
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
