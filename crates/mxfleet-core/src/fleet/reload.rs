//! What a configuration reload changes, decided before anything is touched: a pure comparison
//! of the old and the new accounts. The supervisor only carries the plan out.

use std::collections::BTreeMap;

use mxfleet_config::AccountSpec;

use super::ReloadReport;

/// The accounts a reload stops, restarts, starts and leaves alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReloadPlan {
    /// No longer configured: stopped and forgotten.
    pub(crate) remove: Vec<String>,
    /// Settings changed: stopped, then set up again from the new settings.
    pub(crate) restart: Vec<String>,
    /// New: set up (started if enabled).
    pub(crate) add: Vec<String>,
    /// Same settings: not touched.
    pub(crate) unchanged: Vec<String>,
}

impl ReloadPlan {
    /// The plan from `old` to `new` (every configured account, disabled ones included).
    pub(crate) fn between(
        old: &BTreeMap<String, AccountSpec>,
        new: &BTreeMap<String, AccountSpec>,
    ) -> Self {
        let mut plan = Self {
            remove: old
                .keys()
                .filter(|id| !new.contains_key(*id))
                .cloned()
                .collect(),
            ..Self::default()
        };
        for (id, spec) in new {
            let list = match old.get(id) {
                Some(previous) if previous == spec => &mut plan.unchanged,
                Some(_) => &mut plan.restart,
                None => &mut plan.add,
            };
            list.push(id.clone());
        }
        plan
    }

    /// What the plan does, as an operator reads it: a changed account that is now disabled is
    /// removed, a new disabled one is not started.
    pub(crate) fn report(&self, new: &BTreeMap<String, AccountSpec>) -> ReloadReport {
        let enabled = |id: &&String| new.get(*id).is_some_and(|s| s.enabled);
        ReloadReport {
            added: self.add.iter().filter(enabled).cloned().collect(),
            removed: self
                .remove
                .iter()
                .chain(self.restart.iter().filter(|id| !enabled(id)))
                .cloned()
                .collect(),
            restarted: self.restart.iter().filter(enabled).cloned().collect(),
            unchanged: self.unchanged.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::accounts;

    #[test]
    fn a_reload_touches_only_what_changed() {
        struct Case {
            name: &'static str,
            old: Vec<(&'static str, &'static str)>,
            new: Vec<(&'static str, &'static str)>,
            plan: [&'static [&'static str]; 4],
            report: [&'static [&'static str]; 4],
        }
        let cases = [
            Case {
                name: "nothing changed",
                old: vec![("a", ""), ("b", "")],
                new: vec![("a", ""), ("b", "")],
                plan: [&[], &[], &[], &["a", "b"]],
                report: [&[], &[], &[], &["a", "b"]],
            },
            Case {
                name: "one added, one removed, one changed",
                old: vec![("a", ""), ("b", ""), ("c", "")],
                new: vec![("a", ""), ("b", "dm_policy = \"open\""), ("d", "")],
                plan: [&["c"], &["b"], &["d"], &["a"]],
                report: [&["d"], &["c"], &["b"], &["a"]],
            },
            Case {
                name: "disabling is a removal, a new disabled account is not started",
                old: vec![("a", "")],
                new: vec![("a", "enabled = false"), ("b", "enabled = false")],
                plan: [&[], &["a"], &["b"], &[]],
                report: [&[], &["a"], &[], &[]],
            },
            Case {
                name: "enabling a disabled account starts it",
                old: vec![("a", "enabled = false")],
                new: vec![("a", "")],
                plan: [&[], &["a"], &[], &[]],
                report: [&[], &[], &["a"], &[]],
            },
        ];
        for case in cases {
            let (old, new) = (accounts(&case.old), accounts(&case.new));
            let plan = ReloadPlan::between(&old, &new);
            let got = [&plan.remove, &plan.restart, &plan.add, &plan.unchanged];
            let want = case
                .plan
                .map(|ids| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
            assert_eq!(got, want.each_ref(), "plan: {}", case.name);
            let report = plan.report(&new);
            let got = [
                &report.added,
                &report.removed,
                &report.restarted,
                &report.unchanged,
            ];
            let want = case
                .report
                .map(|ids| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
            assert_eq!(got, want.each_ref(), "report: {}", case.name);
        }
    }
}
