//! Whose the notifier's mail claims are: one database session per process,
//! outside the pool, holds the advisory lock of every mail the process is
//! sending, so a claim lives exactly as long as its process's session (see
//! docs/mail.md). Advisory locks are re-entrant within a session, so the
//! process also keeps the ids of its mails in flight: a second event for one
//! of them finds it in flight instead of claiming it again.
//!
//! The session can be lost while the process lives on (a PostgreSQL restart,
//! a terminated backend, a broken connection). Its locks are then gone, and
//! another process may take its mails over, so its claims are lost with it:
//! each `HeldLock` keeps the session it was taken on, and a claim whose
//! session is lost may not start transmitting (`MailClaim::transmitting`
//! says no, and also checks in SQL that the lock is still held). A send
//! already transmitting goes on to its reply and records it; whoever took
//! the mail over meanwhile found it `transmitting` and made it `uncertain`,
//! never sent it again. New claims open a new session. (After a restart a
//! new backend may get the lost session's pid; the attempt number checked in
//! the same statement still tells a mail taken over from one still owned.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use anyhow::{anyhow, Context};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{NoTls, Statement};

use crate::Result;

/// Names the mail claims among PostgreSQL's advisory locks (the two-key form,
/// keyed by a hash of the mail's id).
pub(crate) const MAIL_LOCKS: i32 = 0x6d61_696c;
/// Mails unlocked in one statement at most.
const MAX_UNLOCKS: usize = 512;

/// The claims of one process (one [`crate::Store`] and its clones).
pub(crate) struct MailLocks {
    config: tokio_postgres::Config,
    /// Connected at the first claim, so services that send no mail hold none;
    /// replaced when lost.
    session: tokio::sync::Mutex<Option<Arc<LockSession>>>,
    /// The mails this process holds a claim on, or is taking one on.
    in_flight: Mutex<HashSet<String>>,
}

/// The session that holds the locks. Its statements are short and go over
/// its one connection in order.
struct LockSession {
    client: tokio_postgres::Client,
    connection: tokio::task::AbortHandle,
    /// Its backend, for checking in SQL that a lock is still held.
    pid: i32,
    lock: Statement,
    /// Mails to unlock, for the session's unlocker: every mail waiting goes
    /// in one statement, so a send costs the session no statement of its
    /// own to end its claim (200,000 mails took 200,000 unlock statements).
    unlocks: mpsc::UnboundedSender<Unlock>,
    lost: AtomicBool,
}

/// A mail to unlock, and its waiter.
struct Unlock {
    id: String,
    done: oneshot::Sender<()>,
}

impl MailLocks {
    pub(crate) fn new(config: tokio_postgres::Config) -> MailLocks {
        MailLocks {
            config,
            session: tokio::sync::Mutex::new(None),
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// Takes the mail's lock on the process's session; `None` when this
    /// process is sending the mail already or another session holds it.
    pub(crate) async fn claim(self: &Arc<Self>, id: &str) -> Result<Option<HeldLock>> {
        Ok(self.claim_many(&[id]).await?.pop().flatten())
    }

    /// As [`MailLocks::claim`] for each of `ids`, in one statement.
    pub(crate) async fn claim_many(self: &Arc<Self>, ids: &[&str]) -> Result<Vec<Option<HeldLock>>> {
        let entries: Vec<_> = ids.iter().map(|id| InFlightEntry::enter(self, id)).collect();
        if entries.iter().all(Option::is_none) {
            return Ok(entries.into_iter().map(|_| None).collect());
        }
        let locks = Arc::clone(self);
        // Spawned, so a claim cancelled mid-way leaves no lock taken and
        // unpaired: a result nobody awaits any more is dropped, which unlocks.
        tokio::spawn(async move { locks.try_lock(entries).await })
            .await
            .context("taking mails' claims")?
    }

    async fn try_lock(&self, entries: Vec<Option<InFlightEntry>>) -> Result<Vec<Option<HeldLock>>> {
        let ids: Vec<String> = entries.iter().flatten().map(|entry| entry.id.clone()).collect();
        let mut retried = false;
        loop {
            let session = self.session().await?;
            match session.client.query(&session.lock, &[&MAIL_LOCKS, &ids]).await {
                Ok(rows) => {
                    // One row per id, in order.
                    let mut locked = rows.iter().map(|row| row.get::<_, bool>(0));
                    return Ok(entries
                        .into_iter()
                        .map(|entry| {
                            let entry = entry?;
                            locked.next().unwrap_or(false).then(|| HeldLock {
                                session: Arc::clone(&session),
                                entry: Some(entry),
                            })
                        })
                        .collect());
                }
                // A session that failed is closed and so holds no locks: once
                // more on a fresh one (the old one may have died long ago).
                Err(err) if !retried => {
                    session.lose(&err);
                    retried = true;
                }
                Err(err) => {
                    session.lose(&err);
                    return Err(anyhow!(err).context("taking mails' claims"));
                }
            }
        }
    }

    async fn session(&self) -> Result<Arc<LockSession>> {
        let mut current = self.session.lock().await;
        let replaced = match current.as_ref() {
            Some(session) if !session.is_lost() => return Ok(Arc::clone(session)),
            Some(session) => {
                // Its connection closed without a failed statement of ours.
                session.lose(&"its connection closed");
                true
            }
            None => false,
        };
        // While PostgreSQL is unreachable this fails (an outage error), and
        // the next claim tries again.
        let session = LockSession::connect(&self.config).await?;
        if replaced {
            tracing::info!(
                pid = session.pid,
                "opened a new session for this process's mail claims"
            );
        }
        *current = Some(Arc::clone(&session));
        Ok(session)
    }
}

impl LockSession {
    async fn connect(config: &tokio_postgres::Config) -> Result<Arc<LockSession>> {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .context("connecting to PostgreSQL for the session holding mail claims")?;
        let connection = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(error = %err, "the session holding mail claims closed");
            }
        })
        .abort_handle();
        let prepared = async {
            let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
            let lock = client
                .prepare(
                    "SELECT pg_try_advisory_lock($1, hashtext(mail.id))
                     FROM unnest($2::text[]) WITH ORDINALITY AS mail (id, n) ORDER BY n",
                )
                .await?;
            let unlock = client
                .prepare(
                    "SELECT mail.id, pg_advisory_unlock($1, hashtext(mail.id))
                     FROM unnest($2::text[]) WITH ORDINALITY AS mail (id, n) ORDER BY n",
                )
                .await?;
            Ok::<_, tokio_postgres::Error>((pid, lock, unlock))
        };
        let (pid, lock, unlock) = match prepared.await {
            Ok(prepared) => prepared,
            Err(err) => {
                connection.abort();
                return Err(anyhow!(err).context("preparing the session holding mail claims"));
            }
        };
        let (unlocks, waiting) = mpsc::unbounded_channel();
        let session = Arc::new(LockSession {
            client,
            connection,
            pid,
            lock,
            unlocks,
            lost: AtomicBool::new(false),
        });
        tokio::spawn(unlock_groups(Arc::downgrade(&session), unlock, waiting));
        Ok(session)
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire) || self.client.is_closed()
    }

    /// A statement failed: the session is closed, so its locks are known to
    /// be gone rather than in doubt. Its sends not yet transmitting find
    /// their lock gone and stop; new claims take a new session.
    fn lose(&self, err: &dyn std::fmt::Display) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %err, pid = self.pid,
                "lost the session holding this process's mail claims: its sends not yet transmitting are given up and retried, new claims take a new session");
        }
        self.connection.abort();
    }

    /// Never fails: a session that cannot unlock is closed, which unlocks.
    async fn unlock(&self, statement: &Statement, group: &[Unlock]) {
        if self.is_lost() {
            return;
        }
        let ids: Vec<&str> = group.iter().map(|unlock| unlock.id.as_str()).collect();
        match self.client.query(statement, &[&MAIL_LOCKS, &ids]).await {
            Ok(rows) => {
                for row in rows.iter().filter(|row| !row.get::<_, bool>(1)) {
                    tracing::warn!(
                        mail = row.get::<_, &str>(0),
                        "a mail's claim was not held when it was released"
                    );
                }
            }
            Err(err) => self.lose(&err),
        }
    }
}

/// Unlocks every mail waiting in one statement, then the next group, until
/// the session is gone (its sender with it).
async fn unlock_groups(
    session: Weak<LockSession>,
    statement: Statement,
    mut waiting: mpsc::UnboundedReceiver<Unlock>,
) {
    let mut group = Vec::new();
    while waiting.recv_many(&mut group, MAX_UNLOCKS).await > 0 {
        let Some(session) = session.upgrade() else {
            return;
        };
        session.unlock(&statement, &group).await;
        for unlock in group.drain(..) {
            let _ = unlock.done.send(());
        }
    }
}

/// A mail's lock, held on the process's session. Released by
/// [`HeldLock::release`], or when dropped (a cancelled send).
pub(crate) struct HeldLock {
    session: Arc<LockSession>,
    /// `None` once released.
    entry: Option<InFlightEntry>,
}

impl HeldLock {
    /// The backend of the session holding the lock.
    pub(crate) fn pid(&self) -> i32 {
        self.session.pid
    }

    /// The session holding the lock is known to be gone, and the lock with it.
    pub(crate) fn is_lost(&self) -> bool {
        self.session.is_lost()
    }

    /// Waits until the lock is released (or its session closed).
    pub(crate) async fn release(mut self) {
        if let Some(unlocked) = self.unlock() {
            // An error too means done: the unlocker went with its session,
            // which closed and so holds no locks.
            let _ = unlocked.await;
        }
    }

    /// Handed to the session's unlocker, so the unlock runs once and to its
    /// end even if the caller is cancelled. The in-process entry goes at
    /// once: should this process claim the mail again before the unlock
    /// runs, the re-entrant lock is taken twice and released once, so the
    /// new claim still holds it.
    fn unlock(&mut self) -> Option<oneshot::Receiver<()>> {
        let entry = self.entry.take()?;
        let (done, unlocked) = oneshot::channel();
        let unlock = Unlock {
            id: entry.id.clone(),
            done,
        };
        drop(entry);
        // Without its unlocker the session is gone, and its locks with it.
        self.session.unlocks.send(unlock).ok()?;
        Some(unlocked)
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        drop(self.unlock());
    }
}

/// A mail in this process's in-flight set, removed when dropped.
struct InFlightEntry {
    locks: Arc<MailLocks>,
    id: String,
}

impl InFlightEntry {
    fn enter(locks: &Arc<MailLocks>, id: &str) -> Option<InFlightEntry> {
        let mut in_flight = locks.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        in_flight.insert(id.to_owned()).then(|| InFlightEntry {
            locks: Arc::clone(locks),
            id: id.to_owned(),
        })
    }
}

impl Drop for InFlightEntry {
    fn drop(&mut self) {
        let mut in_flight = self
            .locks
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_flight.remove(&self.id);
    }
}
