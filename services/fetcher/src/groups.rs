//! Which groups decide scope: the filter groups and every group nested in them,
//! found by following group-in-group edges seen in the groups delta.

use std::collections::{BTreeSet, HashSet};

use usersync_graph::GroupsDeltaPage;

/// What a groups delta round reported, kept small: group-to-group edges and the
/// ids of groups whose membership changed (never the user members themselves).
#[derive(Debug, Default)]
pub struct GroupsScan {
    /// (parent, nested) for every group member added or listed.
    pub edges: Vec<(String, String)>,
    /// Groups with any membership change, or removed.
    pub changed: HashSet<String>,
}

impl GroupsScan {
    pub fn add_page(&mut self, page: &GroupsDeltaPage) {
        for group in &page.groups {
            if group.removed || !group.members.is_empty() {
                self.changed.insert(group.id.clone());
            }
            for member in group.members.iter().filter(|m| m.is_group && !m.removed) {
                self.edges.push((group.id.clone(), member.id.clone()));
            }
        }
    }
}

/// Every group reachable from `roots` over `edges` (the roots included).
pub fn reachable(roots: impl IntoIterator<Item = String>, edges: &[(String, String)]) -> BTreeSet<String> {
    let mut reached: BTreeSet<String> = roots.into_iter().collect();
    loop {
        let before = reached.len();
        for (parent, nested) in edges {
            if reached.contains(parent) && !reached.contains(nested) {
                reached.insert(nested.clone());
            }
        }
        if reached.len() == before {
            return reached;
        }
    }
}

/// Whether the membership must be listed again: no usable stored state, or a
/// change to any group that decides scope.
pub fn needs_relisting(fresh_scan: bool, scope_groups: &BTreeSet<String>, scan: &GroupsScan) -> bool {
    fresh_scan || scan.changed.iter().any(|group| scope_groups.contains(group))
}

#[cfg(test)]
mod tests {
    use super::*;
    use usersync_graph::{GroupDelta, MemberChange, PageLink};

    fn edge(parent: &str, nested: &str) -> (String, String) {
        (parent.to_owned(), nested.to_owned())
    }

    #[test]
    fn nesting_is_followed_at_any_depth_and_cycles_end() {
        let edges = [
            edge("c", "d"),
            edge("a", "b"),
            edge("b", "c"),
            edge("d", "a"),
            edge("x", "y"),
        ];
        let reached = reachable(["a".to_owned()], &edges);
        assert_eq!(reached.into_iter().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    }

    #[test]
    fn only_changes_to_scope_groups_ask_for_relisting() {
        let member = |id: &str, is_group: bool, removed: bool| MemberChange {
            id: id.to_owned(),
            is_group,
            removed,
        };
        let page = GroupsDeltaPage {
            groups: vec![
                GroupDelta {
                    id: "other".into(),
                    removed: false,
                    members: vec![member("u1", false, false)],
                },
                GroupDelta {
                    id: "renamed".into(),
                    removed: false,
                    members: vec![],
                },
                GroupDelta {
                    id: "nested".into(),
                    removed: false,
                    members: vec![member("u2", false, true), member("deeper", true, false)],
                },
            ],
            next: PageLink::Delta("d".into()),
        };
        let mut scan = GroupsScan::default();
        scan.add_page(&page);
        assert_eq!(scan.edges, [edge("nested", "deeper")]);

        let filter_only: BTreeSet<String> = ["filter".to_owned()].into();
        assert!(!needs_relisting(false, &filter_only, &scan));
        assert!(needs_relisting(true, &filter_only, &scan));
        let with_nested: BTreeSet<String> = ["filter".to_owned(), "nested".to_owned()].into();
        assert!(needs_relisting(false, &with_nested, &scan));
        let renamed: BTreeSet<String> = ["renamed".to_owned()].into();
        assert!(
            !needs_relisting(false, &renamed, &scan),
            "a rename changes no membership"
        );
    }
}
