//! `restore --at`: roll the current state back to a past one by appending compensating events.
//! Nothing is rewritten: history keeps both the bad change and its undoing, and the audit log
//! shows who restored what to when. The projectors then carry the result to the sinks.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use crate::catalog::{ListQuery, SecretMeta, Status};
use crate::error::{Error, Result};
use crate::event::Scope;
use crate::ledger::{open_values_at, Command, Ledger, ID_REF_PREFIX};

/// What restoring one secret takes.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreStep {
    /// The secret's name at the target (or now, for one that did not exist then).
    pub name: String,
    /// "delete", "undelete", "rename", "update" (the values or labels differ).
    pub actions: Vec<&'static str>,
}

impl RestorePlan {
    /// What the plan does, as `restore --format json` and `POST /v1/restore` report it.
    pub fn summary(&self, dry_run: bool) -> serde_json::Value {
        serde_json::json!({
            "target_seq": self.target_seq,
            "steps": self.steps,
            "purged": self.purged,
            "not_yours": self.not_yours,
            "dry_run": dry_run,
        })
    }

    /// The commands that carry the plan out: none for a dry run. A plan that would delete
    /// every live secret is refused: its target is most likely before the first secret.
    pub fn commands_to_run(&mut self, dry_run: bool) -> Result<Vec<Command>> {
        if dry_run || self.commands.is_empty() {
            return Ok(Vec::new());
        }
        if self.empties_everything {
            return Err(Error::invalid(format!(
                "no secret was live at seq {}, so restoring to it would delete every secret; pick a \
                 later point (`sledger log` shows the seqs), or name the secrets with --secret",
                self.target_seq
            )));
        }
        Ok(std::mem::take(&mut self.commands))
    }
}

/// The compensating commands for a restore, and what cannot be restored.
#[derive(Debug, Default)]
pub struct RestorePlan {
    pub target_seq: u64,
    pub commands: Vec<Command>,
    pub steps: Vec<RestoreStep>,
    /// Secrets live at the target that were purged since: their values are gone for good.
    pub purged: Vec<String>,
    /// Other owners' private secrets, which this actor cannot see or change.
    pub not_yours: usize,
    /// No secrets were named, and the target has no live secret at all while some are live
    /// now: most likely a point before the first secret (`--seq 0`), which would delete
    /// everything.
    pub empties_everything: bool,
}

fn id_ref(meta: &SecretMeta) -> String {
    format!("{ID_REF_PREFIX}{}", meta.id)
}

impl Ledger {
    /// Plan rolling the current state back to the state after event `seq`, for every secret
    /// `actor` can see, or only those named in `only` (by their name then or now).
    pub fn plan_restore(&self, actor: &str, seq: u64, only: &[String]) -> Result<RestorePlan> {
        let head = self.head()?.seq;
        // Only secrets an event after the target touched can differ from it: each is folded
        // alone, so a restore reads what changed, not the whole catalog twice.
        let touched = self.store().secrets_touched(seq, head)?;
        let (mut then, mut now) = (HashMap::new(), HashMap::new());
        for id in &touched {
            if let Some(m) = self.store().secret(*id)? {
                now.insert(*id, m);
            }
            if let Some(m) = self.state_at(*id, seq)? {
                then.insert(*id, m);
            }
        }
        let wanted = |m: &SecretMeta| only.is_empty() || only.contains(&m.name);
        let mut plan = RestorePlan {
            target_seq: seq,
            ..Default::default()
        };
        let mut matched = BTreeSet::new();
        // Names move through a temporary name (`restore.<id>`), so swaps, chains and undeletes
        // onto names others still hold all work: every target name is free by the last step.
        let (mut deletes, mut to_temporary, mut undeletes, mut to_final, mut updates) =
            (vec![], vec![], vec![], vec![], vec![]);
        for current in touched.iter().filter_map(|id| now.get(id)) {
            let past = then.get(&current.id);
            if !(wanted(current) || past.is_some_and(wanted)) {
                continue;
            }
            if current.scope == Scope::Private && current.owner != actor {
                plan.not_yours += 1;
                continue;
            }
            matched.insert(past.map_or(&current.name, |p| &p.name).clone());
            matched.insert(current.name.clone());
            let target = id_ref(current);
            let mut actions = Vec::new();
            match past.filter(|p| p.status == Status::Live) {
                // Absent then (not yet created, deleted or purged): absent now.
                None => {
                    if current.status == Status::Live {
                        deletes.push(Command::Delete { name: target });
                        actions.push("delete");
                    }
                }
                Some(past) if current.status == Status::Purged => plan.purged.push(past.name.clone()),
                Some(past) => {
                    let deleted = current.status == Status::Deleted;
                    if deleted {
                        undeletes.push(Command::Undelete { name: target.clone() });
                        actions.push("undelete");
                    }
                    if current.name != past.name {
                        let temporary = format!("restore.{}", current.id);
                        let park = Command::Rename {
                            name: target.clone(),
                            new_name: temporary,
                        };
                        // A deleted secret can only be renamed once it is back.
                        if deleted {
                            undeletes.push(park);
                        } else {
                            to_temporary.push(park);
                        }
                        to_final.push(Command::Rename {
                            name: target.clone(),
                            new_name: past.name.clone(),
                        });
                        actions.push("rename");
                    }
                    if past.fingerprints != current.fingerprints || past.labels != current.labels {
                        let (values, _) =
                            open_values_at(self.store(), self.value_keys()?, past, past.value_seq)?;
                        updates.push(Command::Update {
                            name: target,
                            remove_keys: current
                                .fingerprints
                                .keys()
                                .filter(|k| !past.fingerprints.contains_key(*k))
                                .cloned()
                                .collect(),
                            set_values: values,
                            remove_labels: current
                                .labels
                                .keys()
                                .filter(|k| !past.labels.contains_key(*k))
                                .cloned()
                                .collect(),
                            set_labels: past.labels.clone(),
                        });
                        actions.push("update");
                    }
                }
            }
            if !actions.is_empty() {
                let name = past
                    .filter(|p| p.status == Status::Live)
                    .map_or(&current.name, |p| &p.name);
                plan.steps.push(RestoreStep {
                    name: name.clone(),
                    actions,
                });
            }
        }
        let live = |m: &SecretMeta| m.status == Status::Live;
        // A secret no event touched since is live then exactly when it is live now.
        let mut untouched_live = false;
        if only.is_empty() && !then.values().any(live) && now.values().any(live) {
            self.scan_secrets(actor, &ListQuery::new(Status::Live), &mut |m| {
                untouched_live = !now.contains_key(&m.id);
                Ok(!untouched_live)
            })?;
            plan.empties_everything = !untouched_live;
        }
        for name in only.iter().filter(|n| !matched.contains(*n)) {
            // An untouched secret has had the same name all along: there is nothing to restore.
            if self.find_any(actor, name).is_err() {
                return Err(Error::SecretNotFound {
                    name: name.clone(),
                    hint: "; no secret had this name then or has it now".into(),
                });
            }
        }
        // Deletes and temporary names free the names undeletes and final renames need.
        let changes: Vec<Command> = deletes
            .into_iter()
            .chain(to_temporary)
            .chain(undeletes)
            .chain(to_final)
            .chain(updates)
            .collect();
        // Recorded first, in the same transaction: the audit log says what the changes were for.
        if !changes.is_empty() {
            plan.commands = std::iter::once(Command::RecordRestore {
                target_seq: seq,
                planned_at: head,
            })
            .chain(changes)
            .collect();
        }
        plan.steps.sort_by(|a, b| a.name.cmp(&b.name));
        plan.purged.sort();
        Ok(plan)
    }
}
