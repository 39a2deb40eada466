//! The in-memory directory of one tenant: users, groups and the change indexes
//! that make delta rounds cost O(changes) instead of O(directory size).
//!
//! Every mutation takes the next value of one per-tenant sequence. A change
//! index maps sequence → object and keeps only the latest entry per object, so
//! a delta round is a range scan over the index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use serde_json::{Map, Value};

/// A user's Graph properties, including `id`.
pub type Props = Map<String, Value>;

/// Why a directory mutation was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum DirError {
    NotFound(String),
    Conflict(String),
    Invalid(String),
}

pub struct UserRecord {
    pub props: Props,
    /// Sequence at which the user was created or last restored: a delta
    /// round that started before it must send the whole object.
    created_seq: u64,
    /// Properties changed after creation, with the sequence of their last change.
    changed_props: HashMap<String, u64>,
    last_change_seq: u64,
    soft_deleted: bool,
}

impl UserRecord {
    fn new(props: Props, seq: u64) -> Self {
        UserRecord {
            props,
            created_seq: seq,
            changed_props: HashMap::new(),
            last_change_seq: seq,
            soft_deleted: false,
        }
    }

    pub fn is_active(&self) -> bool {
        !self.soft_deleted
    }

    pub fn created_after(&self, since: u64) -> bool {
        self.created_seq > since
    }

    /// Names of the properties changed after `since`.
    pub fn changed_after(&self, since: u64) -> impl Iterator<Item = &str> {
        self.changed_props
            .iter()
            .filter(move |(_, seq)| **seq > since)
            .map(|(name, _)| name.as_str())
    }
}

/// What a delta round should report for a user id found in the change index.
pub enum UserState<'a> {
    Active(&'a UserRecord),
    SoftDeleted,
    HardDeleted,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemberKind {
    User,
    Group,
}

pub struct GroupRecord {
    pub name: String,
    /// Direct members (users and nested groups), ordered by id for paging.
    pub members: BTreeMap<String, MemberKind>,
}

/// An entry of the group change index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupChange {
    /// The group itself was created.
    Group(String),
    /// A direct member joined or left.
    Member { group: String, member: String },
}

#[derive(Default)]
pub struct Directory {
    seq: u64,
    users: BTreeMap<String, UserRecord>,
    /// Hard-deleted user id → sequence of the deletion.
    tombstones: HashMap<String, u64>,
    user_changes: BTreeMap<u64, String>,
    groups: BTreeMap<String, GroupRecord>,
    group_changes: BTreeMap<u64, GroupChange>,
    membership_change_seq: HashMap<(String, String), u64>,
}

/// A seeded group: id, name and the ids of its direct user members.
pub struct SeedGroup {
    pub id: String,
    pub name: String,
    pub member_ids: Vec<String>,
}

impl Directory {
    /// A directory whose initial content is "sequence 0": no change entries,
    /// so seeding 100,000 users adds nothing to the change indexes.
    pub fn seeded(users: Vec<Props>, groups: Vec<SeedGroup>) -> Self {
        let users = users
            .into_iter()
            .filter_map(|props| {
                let id = props.get("id")?.as_str()?.to_owned();
                Some((id, UserRecord::new(props, 0)))
            })
            .collect();
        let groups = groups
            .into_iter()
            .map(|g| {
                let members = g
                    .member_ids
                    .into_iter()
                    .map(|id| (id, MemberKind::User))
                    .collect();
                (
                    g.id,
                    GroupRecord {
                        name: g.name,
                        members,
                    },
                )
            })
            .collect();
        Directory {
            users,
            groups,
            ..Directory::default()
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    // ----- users: reads -----

    pub fn user(&self, id: &str) -> Option<&UserRecord> {
        self.users.get(id)
    }

    pub fn active_user(&self, id: &str) -> Option<&UserRecord> {
        self.users.get(id).filter(|u| u.is_active())
    }

    /// Active users ordered by id, strictly after `after`.
    pub fn active_users_after<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, &'a UserRecord)> + 'a {
        let lower = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        self.users
            .range((lower, Bound::Unbounded))
            .filter(|(_, user)| user.is_active())
            .map(|(id, user)| (id.as_str(), user))
    }

    /// Change index entries with `after < seq <= until`.
    pub fn user_changes(&self, after: u64, until: u64) -> impl Iterator<Item = (u64, &str)> {
        self.user_changes
            .range((Bound::Excluded(after), Bound::Included(until)))
            .map(|(seq, id)| (*seq, id.as_str()))
    }

    pub fn user_state(&self, id: &str) -> Option<UserState<'_>> {
        match self.users.get(id) {
            Some(user) if user.soft_deleted => Some(UserState::SoftDeleted),
            Some(user) => Some(UserState::Active(user)),
            None if self.tombstones.contains_key(id) => Some(UserState::HardDeleted),
            None => None,
        }
    }

    // ----- users: mutations -----

    /// Moves the user's change index entry to a fresh sequence number.
    fn reindex_user(&mut self, id: &str) -> u64 {
        let previous = self
            .users
            .get(id)
            .map(|u| u.last_change_seq)
            .or_else(|| self.tombstones.get(id).copied());
        if let Some(previous) = previous {
            self.user_changes.remove(&previous);
        }
        let seq = self.next_seq();
        self.user_changes.insert(seq, id.to_owned());
        seq
    }

    pub fn create_user(&mut self, props: Props) -> Result<&Props, DirError> {
        let id = match props.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err(DirError::Invalid("user needs a string id".into())),
        };
        if self.users.contains_key(&id) {
            return Err(DirError::Conflict(format!("user {id} already exists")));
        }
        let seq = self.reindex_user(&id);
        self.tombstones.remove(&id);
        let user = self
            .users
            .entry(id)
            .or_insert_with(|| UserRecord::new(props, seq));
        Ok(&user.props)
    }

    /// Applies a partial update: `null` clears a property, a nested object is
    /// merged into the existing one (as Graph does for complex properties).
    pub fn patch_user(&mut self, id: &str, patch: Props) -> Result<&Props, DirError> {
        if patch.contains_key("id") {
            return Err(DirError::Invalid("the id cannot be changed".into()));
        }
        match self.users.get(id) {
            Some(user) if user.is_active() => {}
            _ => return Err(DirError::NotFound(format!("user {id}"))),
        }
        let seq = self.reindex_user(id);
        let user = self
            .users
            .get_mut(id)
            .ok_or_else(|| DirError::NotFound(format!("user {id}")))?;
        user.last_change_seq = seq;
        for (name, value) in patch {
            merge_property(&mut user.props, &name, value);
            user.changed_props.insert(name, seq);
        }
        Ok(&user.props)
    }

    pub fn soft_delete_user(&mut self, id: &str) -> Result<(), DirError> {
        match self.users.get(id) {
            Some(user) if user.is_active() => {}
            _ => return Err(DirError::NotFound(format!("user {id}"))),
        }
        let seq = self.reindex_user(id);
        if let Some(user) = self.users.get_mut(id) {
            user.soft_deleted = true;
            user.last_change_seq = seq;
        }
        // Entra drops a deleted user from its groups; memberships come back on restore.
        self.record_membership_changes_of(id);
        Ok(())
    }

    pub fn restore_user(&mut self, id: &str) -> Result<&Props, DirError> {
        match self.users.get(id) {
            Some(user) if !user.is_active() => {}
            _ => return Err(DirError::NotFound(format!("deleted user {id}"))),
        }
        let seq = self.reindex_user(id);
        self.record_membership_changes_of(id);
        let user = self
            .users
            .get_mut(id)
            .ok_or_else(|| DirError::NotFound(format!("user {id}")))?;
        user.soft_deleted = false;
        user.created_seq = seq;
        user.last_change_seq = seq;
        user.changed_props.clear();
        Ok(&user.props)
    }

    /// Removes the user for good, from a live or a soft-deleted state.
    pub fn hard_delete_user(&mut self, id: &str) -> Result<(), DirError> {
        if !self.users.contains_key(id) {
            return Err(DirError::NotFound(format!("user {id}")));
        }
        let seq = self.reindex_user(id);
        self.users.remove(id);
        self.tombstones.insert(id.to_owned(), seq);
        for group in self.groups_containing(id) {
            if let Some(record) = self.groups.get_mut(&group) {
                record.members.remove(id);
            }
            self.record_membership_change(&group, id);
        }
        Ok(())
    }

    // ----- groups: reads -----

    pub fn group(&self, id: &str) -> Option<&GroupRecord> {
        self.groups.get(id)
    }

    pub fn groups(&self) -> impl Iterator<Item = (&str, &GroupRecord)> {
        self.groups.iter().map(|(id, g)| (id.as_str(), g))
    }

    /// Groups ordered by id, starting at `from` (inclusive or exclusive).
    pub fn groups_from(&self, from: Bound<&str>) -> impl Iterator<Item = (&str, &GroupRecord)> {
        let from = match from {
            Bound::Included(id) => Bound::Included(id.to_owned()),
            Bound::Excluded(id) => Bound::Excluded(id.to_owned()),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.groups
            .range((from, Bound::Unbounded))
            .map(|(id, g)| (id.as_str(), g))
    }

    /// Whether `member` counts as a current direct member of `group`:
    /// soft-deleted users are not members.
    pub fn is_current_member(&self, group: &GroupRecord, member: &str) -> bool {
        match group.members.get(member) {
            Some(MemberKind::User) => self.active_user(member).is_some(),
            Some(MemberKind::Group) => true,
            None => false,
        }
    }

    /// Current direct members of `group` ordered by id, strictly after `after`.
    pub fn current_members_after<'a>(
        &'a self,
        group: &'a GroupRecord,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, MemberKind)> + 'a {
        let lower = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        group
            .members
            .range((lower, Bound::Unbounded))
            .filter(|(id, kind)| **kind == MemberKind::Group || self.active_user(id).is_some())
            .map(|(id, kind)| (id.as_str(), *kind))
    }

    pub fn group_changes(&self, after: u64, until: u64) -> impl Iterator<Item = (u64, &GroupChange)> {
        self.group_changes
            .range((Bound::Excluded(after), Bound::Included(until)))
            .map(|(seq, change)| (*seq, change))
    }

    pub fn member_kind(&self, id: &str) -> Option<MemberKind> {
        if self.users.contains_key(id) {
            Some(MemberKind::User)
        } else if self.groups.contains_key(id) {
            Some(MemberKind::Group)
        } else {
            None
        }
    }

    /// The group and every group nested in it, each once (cycles are allowed).
    fn reachable_groups(&self, root: &str) -> Vec<&GroupRecord> {
        let mut seen = BTreeSet::from([root]);
        let mut pending = vec![root];
        let mut found = Vec::new();
        while let Some(id) = pending.pop() {
            let Some(group) = self.groups.get(id) else {
                continue;
            };
            found.push(group);
            for (member, kind) in &group.members {
                if *kind == MemberKind::Group && seen.insert(member.as_str()) {
                    pending.push(member.as_str());
                }
            }
        }
        found
    }

    /// Up to `limit` active user members of `root`, nested groups included,
    /// deduplicated and ordered by id, strictly after `after`. Each nested
    /// group contributes at most `limit` candidates, so a page costs
    /// O(groups · limit · log n) however large the groups are.
    pub fn transitive_users_page(&self, root: &str, after: Option<&str>, limit: usize) -> Vec<&str> {
        let lower = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        let mut candidates = BTreeSet::new();
        for group in self.reachable_groups(root) {
            let users = group
                .members
                .range((lower.clone(), Bound::Unbounded))
                .filter(|(id, kind)| **kind == MemberKind::User && self.active_user(id).is_some())
                .map(|(id, _)| id.as_str())
                .take(limit);
            candidates.extend(users);
        }
        candidates.into_iter().take(limit).collect()
    }

    /// Number of distinct active users in `root` and its nested groups (O(members)).
    pub fn transitive_user_count(&self, root: &str) -> usize {
        let mut users = BTreeSet::new();
        for group in self.reachable_groups(root) {
            users.extend(
                group
                    .members
                    .iter()
                    .filter(|(id, kind)| **kind == MemberKind::User && self.active_user(id).is_some())
                    .map(|(id, _)| id.as_str()),
            );
        }
        users.len()
    }

    // ----- groups: mutations -----

    pub fn create_group(&mut self, id: String, name: String) -> Result<(), DirError> {
        if self.groups.contains_key(&id) || self.users.contains_key(&id) {
            return Err(DirError::Conflict(format!("object {id} already exists")));
        }
        let seq = self.next_seq();
        self.group_changes.insert(seq, GroupChange::Group(id.clone()));
        let members = BTreeMap::new();
        self.groups.insert(id, GroupRecord { name, members });
        Ok(())
    }

    pub fn add_member(&mut self, group: &str, member: &str) -> Result<(), DirError> {
        let kind = self
            .member_kind(member)
            .ok_or_else(|| DirError::NotFound(format!("object {member}")))?;
        if group == member {
            return Err(DirError::Invalid("a group cannot contain itself".into()));
        }
        let record = self
            .groups
            .get_mut(group)
            .ok_or_else(|| DirError::NotFound(format!("group {group}")))?;
        if record.members.insert(member.to_owned(), kind).is_some() {
            return Err(DirError::Conflict(format!("{member} is already a member")));
        }
        self.record_membership_change(group, member);
        Ok(())
    }

    pub fn remove_member(&mut self, group: &str, member: &str) -> Result<(), DirError> {
        let record = self
            .groups
            .get_mut(group)
            .ok_or_else(|| DirError::NotFound(format!("group {group}")))?;
        if record.members.remove(member).is_none() {
            return Err(DirError::NotFound(format!("member {member} of {group}")));
        }
        self.record_membership_change(group, member);
        Ok(())
    }

    pub fn groups_containing(&self, member: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, g)| g.members.contains_key(member))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn record_membership_changes_of(&mut self, member: &str) {
        for group in self.groups_containing(member) {
            self.record_membership_change(&group, member);
        }
    }

    fn record_membership_change(&mut self, group: &str, member: &str) {
        let seq = self.next_seq();
        let key = (group.to_owned(), member.to_owned());
        if let Some(previous) = self.membership_change_seq.insert(key, seq) {
            self.group_changes.remove(&previous);
        }
        let change = GroupChange::Member {
            group: group.to_owned(),
            member: member.to_owned(),
        };
        self.group_changes.insert(seq, change);
    }
}

fn merge_property(props: &mut Props, name: &str, value: Value) {
    match (props.get_mut(name), value) {
        (Some(Value::Object(existing)), Value::Object(update)) => existing.extend(update),
        (_, Value::Null) => {
            props.remove(name);
        }
        (_, value) => {
            props.insert(name.to_owned(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(value: Value) -> Props {
        match value {
            Value::Object(map) => map,
            _ => Props::new(),
        }
    }

    fn user(id: &str) -> Props {
        props(json!({"id": id, "displayName": id}))
    }

    #[test]
    fn a_user_keeps_one_change_index_entry() {
        let mut dir = Directory::seeded(vec![user("a"), user("b")], Vec::new());
        dir.patch_user("a", props(json!({"jobTitle": "x"}))).unwrap();
        dir.patch_user("a", props(json!({"jobTitle": "y"}))).unwrap();
        let changes: Vec<_> = dir.user_changes(0, dir.seq()).collect();
        assert_eq!(changes, vec![(2, "a")]);
    }

    #[test]
    fn patch_merges_nested_objects_and_null_clears() {
        let mut seed = user("a");
        seed.insert("mobilePhone".into(), json!("+46 70 000 00 00"));
        seed.insert(
            "onPremisesExtensionAttributes".into(),
            json!({"extensionAttribute1": "1", "extensionAttribute2": "2"}),
        );
        let mut dir = Directory::seeded(vec![seed], Vec::new());
        let patch = json!({
            "mobilePhone": null,
            "onPremisesExtensionAttributes": {"extensionAttribute2": null}
        });
        let updated = dir.patch_user("a", props(patch)).unwrap().clone();
        assert!(!updated.contains_key("mobilePhone"));
        assert_eq!(
            updated["onPremisesExtensionAttributes"],
            json!({"extensionAttribute1": "1", "extensionAttribute2": null})
        );
    }

    #[test]
    fn transitive_members_follow_nesting_and_cycles() {
        let groups = vec![
            SeedGroup {
                id: "g1".into(),
                name: "outer".into(),
                member_ids: vec!["a".into()],
            },
            SeedGroup {
                id: "g2".into(),
                name: "inner".into(),
                member_ids: vec!["a".into(), "b".into()],
            },
        ];
        let users = vec![user("a"), user("b"), user("c")];
        let mut dir = Directory::seeded(users, groups);
        dir.add_member("g1", "g2").unwrap();
        dir.add_member("g2", "g1").unwrap();
        assert_eq!(dir.transitive_users_page("g1", None, 10), vec!["a", "b"]);
        assert_eq!(dir.transitive_users_page("g1", Some("a"), 10), vec!["b"]);
        assert_eq!(dir.transitive_user_count("g1"), 2);
        dir.soft_delete_user("b").unwrap();
        assert_eq!(dir.transitive_users_page("g1", None, 10), vec!["a"]);
    }

    #[test]
    fn soft_delete_and_restore_are_membership_changes() {
        let groups = vec![SeedGroup {
            id: "g".into(),
            name: "g".into(),
            member_ids: vec!["a".into()],
        }];
        let mut dir = Directory::seeded(vec![user("a")], groups);
        dir.soft_delete_user("a").unwrap();
        let group = dir.group("g").unwrap();
        assert!(!dir.is_current_member(group, "a"));
        dir.restore_user("a").unwrap();
        let changes: Vec<_> = dir.group_changes(0, dir.seq()).map(|(_, c)| c.clone()).collect();
        let member_change = GroupChange::Member {
            group: "g".into(),
            member: "a".into(),
        };
        assert_eq!(changes, vec![member_change]);
        assert!(dir.is_current_member(dir.group("g").unwrap(), "a"));
    }
}
