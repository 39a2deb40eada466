//! One company's users, kept in creation order (for stable cursor paging)
//! with hash indexes on every unique field.

use std::collections::{BTreeMap, HashMap};

use crate::error::ApiError;
use crate::user::User;

#[derive(Debug, Default)]
pub struct Directory {
    next_seq: u64,
    by_seq: BTreeMap<u64, User>,
    seq_by_id: HashMap<String, u64>,
    id_by_alias: HashMap<String, String>,
    id_by_pstn: HashMap<String, String>,
    id_by_external_id: HashMap<String, String>,
}

/// One page of users plus the position to continue after, if any remain.
pub struct Page {
    pub users: Vec<User>,
    pub next_after: Option<u64>,
}

impl Directory {
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn get(&self, id: &str) -> Option<&User> {
        self.seq_by_id.get(id).and_then(|seq| self.by_seq.get(seq))
    }

    pub fn find_by_alias(&self, alias: &str) -> Option<&User> {
        self.id_by_alias.get(alias).and_then(|id| self.get(id))
    }

    pub fn find_by_external_id(&self, external_id: &str) -> Option<&User> {
        self.id_by_external_id
            .get(external_id)
            .and_then(|id| self.get(id))
    }

    /// Users created after position `after` (exclusive), at most `limit` of them.
    pub fn page(&self, after: Option<u64>, limit: usize) -> Page {
        let start = after.map_or(0, |seq| seq.saturating_add(1));
        let mut entries = self.by_seq.range(start..);
        let users: Vec<User> = entries
            .by_ref()
            .take(limit)
            .map(|(_, user)| user.clone())
            .collect();
        let has_more = entries.next().is_some();
        let next_after = has_more
            .then(|| users.last().and_then(|user| self.seq_by_id.get(&user.id)))
            .flatten()
            .copied();
        Page { users, next_after }
    }

    pub fn all(&self) -> Vec<User> {
        self.by_seq.values().cloned().collect()
    }

    /// The 409 `candidate` would cause, ignoring the user it replaces.
    pub fn check_unique(&self, candidate: &User) -> Result<(), ApiError> {
        let taken = |index: &HashMap<String, String>, value: &str| {
            index
                .get(value)
                .filter(|holder| **holder != candidate.id)
                .cloned()
        };
        if let Some(holder) = taken(&self.id_by_alias, &candidate.alias) {
            return Err(ApiError::conflict("alias", &holder));
        }
        if let Some(holder) = taken(&self.id_by_pstn, &candidate.pstn_fixed) {
            return Err(ApiError::conflict("pstn_fixed", &holder));
        }
        if let Some(external_id) = &candidate.external_id {
            if let Some(holder) = taken(&self.id_by_external_id, external_id) {
                return Err(ApiError::conflict("external_id", &holder));
            }
        }
        Ok(())
    }

    /// Inserts a new user or replaces the stored one with the same id.
    /// The caller has checked uniqueness.
    pub fn upsert(&mut self, user: User) {
        let seq = match self.seq_by_id.get(&user.id) {
            Some(&seq) => {
                if let Some(old) = self.by_seq.get(&seq).cloned() {
                    self.unindex(&old);
                }
                seq
            }
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.seq_by_id.insert(user.id.clone(), seq);
                seq
            }
        };
        self.index(&user);
        self.by_seq.insert(seq, user);
    }

    pub fn remove(&mut self, id: &str) -> Option<User> {
        let seq = self.seq_by_id.remove(id)?;
        let user = self.by_seq.remove(&seq)?;
        self.unindex(&user);
        Some(user)
    }

    /// Forgets every user; positions keep counting up so old cursors never
    /// point into the new population.
    pub fn clear(&mut self) {
        let next_seq = self.next_seq;
        *self = Self {
            next_seq,
            ..Self::default()
        };
    }

    fn index(&mut self, user: &User) {
        self.id_by_alias.insert(user.alias.clone(), user.id.clone());
        self.id_by_pstn.insert(user.pstn_fixed.clone(), user.id.clone());
        if let Some(external_id) = &user.external_id {
            self.id_by_external_id
                .insert(external_id.clone(), user.id.clone());
        }
    }

    fn unindex(&mut self, user: &User) {
        self.id_by_alias.remove(&user.alias);
        self.id_by_pstn.remove(&user.pstn_fixed);
        if let Some(external_id) = &user.external_id {
            self.id_by_external_id.remove(external_id);
        }
    }
}
