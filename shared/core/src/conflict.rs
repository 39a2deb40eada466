//! Conflicts inside one tenant: two directory users whose mapped alias or
//! fixed number is the same. The PBX keeps both unique per company, so one of
//! them must stand back, and the choice must not depend on the order in which
//! users are read.
//!
//! The rule: a user whose PBX account already has the value keeps it; among
//! the rest, the lowest object id wins. Every other user wanting the value is
//! skipped with a reason naming the winner.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::problem::Problem;
use crate::user::SyncedFields;

/// A PBX field that is unique within a company.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UniqueField {
    Alias,
    PstnFixed,
}

impl UniqueField {
    pub const ALL: [UniqueField; 2] = [UniqueField::Alias, UniqueField::PstnFixed];

    pub fn as_str(self) -> &'static str {
        match self {
            UniqueField::Alias => "alias",
            UniqueField::PstnFixed => "pstn_fixed",
        }
    }

    pub fn parse(text: &str) -> Option<UniqueField> {
        UniqueField::ALL.into_iter().find(|f| f.as_str() == text)
    }

    fn of(self, fields: &SyncedFields) -> &str {
        match self {
            UniqueField::Alias => &fields.alias,
            UniqueField::PstnFixed => &fields.pstn_fixed,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            UniqueField::Alias => "alias",
            UniqueField::PstnFixed => "fixed number",
        }
    }
}

impl fmt::Display for UniqueField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One user's claim on a unique value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Claim {
    pub field: UniqueField,
    pub value: String,
    pub object_id: String,
    /// The user's PBX account has this value now.
    pub holds: bool,
    /// The user's desired state has this value (it would be written).
    pub wants: bool,
}

/// The claims one user makes: its desired values, and the values its PBX
/// account still has (until a change moves it off them).
pub fn claims_of(
    object_id: &str,
    desired: Option<&SyncedFields>,
    applied: Option<&SyncedFields>,
) -> Vec<Claim> {
    let mut claims = Vec::new();
    for field in UniqueField::ALL {
        let wanted = desired.map(|d| field.of(d));
        let held = applied.map(|a| field.of(a));
        if let Some(value) = wanted {
            claims.push(Claim {
                field,
                value: value.to_owned(),
                object_id: object_id.to_owned(),
                holds: held == Some(value),
                wants: true,
            });
        }
        if let Some(value) = held.filter(|held| Some(*held) != wanted) {
            claims.push(Claim {
                field,
                value: value.to_owned(),
                object_id: object_id.to_owned(),
                holds: true,
                wants: false,
            });
        }
    }
    claims
}

/// One value claimed by several users, and who keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub field: UniqueField,
    pub value: String,
    pub winner: String,
    /// The winner's PBX account has the value already.
    pub winner_holds: bool,
    /// The winner only holds the value and no longer wants it (it is being
    /// renamed or is out of scope): every claimant waits until it lets go.
    pub winner_leaving: bool,
    /// Users who want the value and may not have it, by object id.
    pub losers: Vec<String>,
}

impl Conflict {
    /// Why `loser` is skipped: names the value, the other user and the fix.
    pub fn problem_for(&self, loser: &str) -> Problem {
        let why = if self.winner_leaving {
            "whose PBX account still has it"
        } else if self.winner_holds {
            "who has it in the PBX already"
        } else {
            "who keeps it (the lowest object id wins when neither has it yet)"
        };
        Problem::new(
            self.field.as_str(),
            format!(
                "{} \"{}\" is also claimed by user {}, {why}; this user ({loser}) is not synced until \
                 one of them gets another {} in Entra ID",
                self.field.noun(),
                self.value,
                self.winner,
                self.field.noun()
            ),
        )
    }

    /// A run-level line naming every user involved.
    pub fn warning(&self) -> String {
        format!(
            "{} \"{}\" is claimed by several users: {} keeps it, {} skipped",
            self.field.noun(),
            self.value,
            self.winner,
            self.losers.join(", ")
        )
    }
}

/// Decides who may have each contested value. Values a user's PBX account
/// has are reserved for it first; then users are taken in object-id order, and
/// one is synced only if every value it wants is free or its own, reserving
/// them. A skipped user reserves nothing new, so it never blocks a third user.
/// Claims on values nobody else claims may be left out; the order of `claims`
/// does not matter.
pub fn resolve_conflicts(claims: &[Claim]) -> Vec<Conflict> {
    struct Owner<'a> {
        object_id: &'a str,
        holds: bool,
        wants: bool,
    }
    let mut owners: BTreeMap<(UniqueField, &str), Owner> = BTreeMap::new();
    let mut sorted: Vec<&Claim> = claims.iter().collect();
    sorted.sort();
    for claim in sorted.iter().filter(|c| c.holds) {
        let owner = owners.entry((claim.field, &claim.value)).or_insert(Owner {
            object_id: &claim.object_id,
            holds: true,
            wants: false,
        });
        // The PBX keeps values unique, so a second holder is stale data: the first by id wins.
        if owner.object_id == claim.object_id {
            owner.wants |= claim.wants;
        }
    }
    let mut wanted: BTreeMap<&str, Vec<&Claim>> = BTreeMap::new();
    for claim in sorted.iter().filter(|c| c.wants) {
        wanted.entry(&claim.object_id).or_default().push(claim);
    }
    let mut lost: BTreeMap<(UniqueField, &str), Vec<String>> = BTreeMap::new();
    for (user, claims) in &wanted {
        let blocked: Vec<&&Claim> = claims
            .iter()
            .filter(|c| {
                owners
                    .get(&(c.field, c.value.as_str()))
                    .is_some_and(|owner| owner.object_id != *user)
            })
            .collect();
        if blocked.is_empty() {
            for claim in claims {
                owners.entry((claim.field, &claim.value)).or_insert(Owner {
                    object_id: user,
                    holds: false,
                    wants: true,
                });
            }
        } else {
            for claim in blocked {
                lost.entry((claim.field, &claim.value))
                    .or_default()
                    .push((*user).to_owned());
            }
        }
    }
    lost.into_iter()
        .filter_map(|((field, value), losers)| {
            let owner = owners.get(&(field, value))?;
            Some(Conflict {
                field,
                value: value.to_owned(),
                winner: owner.object_id.to_owned(),
                winner_holds: owner.holds,
                winner_leaving: !owner.wants,
                losers,
            })
        })
        .collect()
}

/// Each losing user with why it is skipped (a user can lose on both fields).
pub fn losers(conflicts: &[Conflict]) -> BTreeMap<String, Vec<Problem>> {
    let mut out: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
    for conflict in conflicts {
        for loser in &conflict.losers {
            out.entry(loser.clone())
                .or_default()
                .push(conflict.problem_for(loser));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Map;

    fn fields(alias: &str, number: &str) -> SyncedFields {
        SyncedFields {
            alias: alias.into(),
            first_name: "A".into(),
            surname: "B".into(),
            pstn_fixed: number.into(),
            email: None,
            attributes: Map::new(),
        }
    }

    #[test]
    fn two_new_users_with_one_alias_lowest_object_id_wins() {
        let mut claims = claims_of("u2", Some(&fields("anna", "46811111111")), None);
        claims.extend(claims_of("u1", Some(&fields("anna", "46822222222")), None));
        let conflicts = resolve_conflicts(&claims);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].winner, "u1");
        assert_eq!(conflicts[0].losers, ["u2"]);
        let problem = conflicts[0].problem_for("u2");
        assert_eq!(problem.field, "alias");
        assert!(
            problem.message.contains("\"anna\" is also claimed by user u1"),
            "{problem}"
        );
        assert!(problem.message.contains("another alias in Entra ID"), "{problem}");
        assert!(conflicts[0].warning().contains("u1 keeps it, u2 skipped"));
    }

    #[test]
    fn the_user_already_in_the_pbx_keeps_the_number() {
        let applied = fields("zed", "46811111111");
        let mut claims = claims_of("u9", Some(&applied), Some(&applied));
        claims.extend(claims_of("u1", Some(&fields("anna", "46811111111")), None));
        let conflicts = resolve_conflicts(&claims);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].field, UniqueField::PstnFixed);
        assert_eq!(conflicts[0].winner, "u9");
        assert!(conflicts[0].winner_holds);
        assert!(conflicts[0]
            .problem_for("u1")
            .message
            .contains("has it in the PBX already"));
    }

    #[test]
    fn a_value_still_held_by_a_leaving_user_waits() {
        // u9 is out of scope (pending deletion) or renaming: it holds "anna" until it lets go.
        let mut claims = claims_of("u9", None, Some(&fields("anna", "46811111111")));
        claims.extend(claims_of("u1", Some(&fields("anna", "46822222222")), None));
        let conflicts = resolve_conflicts(&claims);
        assert_eq!(conflicts[0].winner, "u9");
        assert!(conflicts[0].winner_leaving);
        assert_eq!(conflicts[0].losers, ["u1"]);
        assert!(conflicts[0].problem_for("u1").message.contains("still has it"));
    }

    #[test]
    fn distinct_values_are_no_conflict() {
        let mut claims = claims_of("u1", Some(&fields("anna", "46811111111")), None);
        claims.extend(claims_of("u2", Some(&fields("bo", "46822222222")), None));
        assert!(resolve_conflicts(&claims).is_empty());
    }

    #[test]
    fn a_rename_claims_both_the_old_and_the_new_value() {
        let claims = claims_of(
            "u1",
            Some(&fields("new", "46811111111")),
            Some(&fields("old", "46811111111")),
        );
        let values: Vec<(&str, bool, bool)> = claims
            .iter()
            .map(|c| (c.value.as_str(), c.holds, c.wants))
            .collect();
        assert_eq!(
            values,
            [
                ("new", false, true),
                ("old", true, false),
                ("46811111111", true, true)
            ]
        );
    }

    #[test]
    fn a_user_can_lose_on_both_fields() {
        let mut claims = claims_of("u1", Some(&fields("anna", "46811111111")), None);
        claims.extend(claims_of("u2", Some(&fields("anna", "46811111111")), None));
        let lost = losers(&resolve_conflicts(&claims));
        assert_eq!(lost.len(), 1);
        let fields: Vec<&str> = lost["u2"].iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["alias", "pstn_fixed"]);
    }

    #[test]
    fn a_skipped_user_does_not_block_a_third_one() {
        // u1 loses its alias to u9, who has it in the PBX; u1's number is then free for u2.
        let held = fields("anna", "46899999999");
        let mut claims = claims_of("u9", Some(&held), Some(&held));
        claims.extend(claims_of("u1", Some(&fields("anna", "46811111111")), None));
        claims.extend(claims_of("u2", Some(&fields("bo", "46811111111")), None));
        let conflicts = resolve_conflicts(&claims);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].winner, "u9");
        assert_eq!(conflicts[0].losers, ["u1"]);
        assert!(!losers(&conflicts).contains_key("u2"));
    }

    proptest! {
        #[test]
        fn the_outcome_does_not_depend_on_reading_order(
            users in proptest::collection::vec(("[ab][0-3]?", "[ab][0-3]?", any::<bool>()), 1..8),
            seed in any::<u64>(),
        ) {
            let mut claims: Vec<Claim> = Vec::new();
            for (index, (alias, number, in_pbx)) in users.iter().enumerate() {
                let desired = fields(alias, number);
                // The PBX keeps values unique: a user's applied values carry its index
                // (and equal its desired ones when those happen to carry it too).
                let applied = in_pbx.then(|| fields(&format!("{}{index}", &alias[..1]), &format!("{}{index}", &number[..1])));
                claims.extend(claims_of(&format!("u{index}"), Some(&desired), applied.as_ref()));
            }
            let first = resolve_conflicts(&claims);
            let mut shuffled = claims.clone();
            let len = shuffled.len();
            for i in 0..len {
                let j = (seed.wrapping_mul(i as u64 + 7) % len as u64) as usize;
                shuffled.swap(i, j);
            }
            prop_assert_eq!(&first, &resolve_conflicts(&shuffled));
            // Of the users synced (losing nothing), no two want one value, and
            // none wants a value another user's PBX account keeps.
            let skipped = losers(&first);
            let synced = |id: &String| !skipped.contains_key(id);
            let mut taken: Map<(UniqueField, &str), &String> = Map::new();
            for claim in claims.iter().filter(|c| c.wants && synced(&c.object_id)) {
                let owner = taken.entry((claim.field, &claim.value)).or_insert(&claim.object_id);
                prop_assert_eq!(*owner, &claim.object_id);
            }
            for claim in claims.iter().filter(|c| c.holds && !c.wants) {
                if let Some(owner) = taken.get(&(claim.field, claim.value.as_str())) {
                    prop_assert_eq!(*owner, &claim.object_id, "a held value was given away");
                }
            }
            for conflict in &first {
                prop_assert!(!conflict.losers.contains(&conflict.winner));
            }
        }
    }
}
