//! A write transaction's writes, held until a statement needs an answer (or the COMMIT), then
//! sent as the few statements they merge into: every event as one INSERT, the catalog rows of
//! secrets created as one INSERT and of the others as one upsert, every data key as one INSERT,
//! every setting as one upsert. A group commit of
//! many requests so costs a handful of statements, not several per request, and a request
//! rolled back before anything was sent costs none.

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::types::ToSql;

use crate::catalog::SecretMeta;
use crate::event::StoredEvent;
use crate::store::Setting;
use crate::SecretId;

/// Parameters a held write owns until it is sent.
pub(super) type OwnedParams = Vec<Box<dyn ToSql + Sync + Send>>;

/// One write, as the store was asked for it.
pub(super) enum Write {
    Event(StoredEvent),
    Secret(SecretMeta),
    PutKey(SecretId, Vec<u8>),
    DeleteKey(SecretId),
    Setting(String, Setting),
    /// Any other statement: sent as it is, in its place (the writes around it are not merged
    /// across it).
    Statement(&'static str, OwnedParams),
    /// Transaction control (savepoints), in the simple protocol, in its place.
    Command(String),
}

/// What goes over the wire: a statement with its parameters, or a simple command.
pub(super) enum Wire {
    Statement(&'static str, OwnedParams),
    Command(String),
}

/// `writes`, in order, as statements with the same effect.
pub(super) fn merge(writes: Vec<Write>) -> Vec<Wire> {
    let mut wire = Vec::new();
    let mut run = Run::default();
    for write in writes {
        match write {
            Write::Event(event) => run.events.push(event),
            Write::Secret(meta) => {
                run.secrets.insert(meta.id, meta);
            }
            Write::PutKey(id, wrapped) => {
                run.put_keys.insert(id, wrapped);
            }
            Write::DeleteKey(id) => {
                run.put_keys.remove(&id);
                run.deleted_keys.push(id);
            }
            Write::Setting(key, value) => {
                run.settings.insert(key, value);
            }
            Write::Statement(sql, params) => {
                std::mem::take(&mut run).send(&mut wire);
                wire.push(Wire::Statement(sql, params));
            }
            Write::Command(sql) => {
                std::mem::take(&mut run).send(&mut wire);
                wire.push(Wire::Command(sql));
            }
        }
    }
    run.send(&mut wire);
    wire
}

/// Writes between two statements sent as they are: merged, since each touches its own table
/// and, within one, the last write of a row is what stands.
#[derive(Default)]
struct Run {
    events: Vec<StoredEvent>,
    /// The last row of each secret.
    secrets: BTreeMap<SecretId, SecretMeta>,
    /// Keys put and not deleted after; a key deleted and put again is deleted first.
    put_keys: BTreeMap<SecretId, Vec<u8>>,
    deleted_keys: Vec<SecretId>,
    settings: BTreeMap<String, Setting>,
}

fn ids<'a>(ids: impl Iterator<Item = &'a SecretId>) -> Vec<Vec<u8>> {
    ids.map(|id| id.as_bytes().to_vec()).collect()
}

impl Run {
    /// Deletes first, planned for their parameters like every read (they search); then the
    /// inserts and upserts with generic plans: they search nothing, so a plan made once serves
    /// every later run, where planning each anew cost a fifth of the database's time a group.
    fn send(self, wire: &mut Vec<Wire>) {
        // A secret created in this run has no rows yet: no labels to delete, no catalog row to
        // update.
        let created: HashSet<SecretId> = self
            .events
            .iter()
            .filter(|e| e.event_type == "secret.created")
            .filter_map(|e| e.secret_id)
            .collect();
        let metas: Vec<&SecretMeta> = self.secrets.values().collect();
        let mut statement = |sql, params| wire.push(Wire::Statement(sql, params));
        if !self.deleted_keys.is_empty() {
            statement(
                "DELETE FROM secret_keys WHERE secret_id = ANY($1)",
                vec![Box::new(ids(self.deleted_keys.iter()))],
            );
        }
        let relabelled = ids(metas.iter().map(|m| &m.id).filter(|id| !created.contains(id)));
        if !relabelled.is_empty() {
            statement(
                "DELETE FROM catalog_labels WHERE secret_id = ANY($1)",
                vec![Box::new(relabelled)],
            );
        }
        let mut inserts = Vec::new();
        if !self.events.is_empty() {
            inserts.push((INSERT_EVENTS, events(&self.events)));
        }
        if !self.put_keys.is_empty() {
            inserts.push((
                "INSERT INTO secret_keys (secret_id, wrapped) SELECT * FROM unnest($1::bytea[], $2::bytea[])",
                vec![
                    Box::new(ids(self.put_keys.keys())),
                    Box::new(self.put_keys.into_values().collect::<Vec<_>>()) as Box<dyn ToSql + Sync + Send>,
                ],
            ));
        }
        let (new, known): (Vec<&SecretMeta>, Vec<&SecretMeta>) =
            metas.iter().partition(|m| created.contains(&m.id));
        // The known rows first, so that a name one of them gives up is free before a new row
        // takes it: the live-names index checks each row as it goes in. (The ledger asks the
        // store again about any name whose row changed, which sends the writes held so far; a
        // run holds no such pair today, but nothing here should depend on that.)
        if !known.is_empty() {
            inserts.push((UPSERT_CATALOG, catalog_columns(&known)));
        }
        if !new.is_empty() {
            inserts.push((INSERT_CATALOG, catalog_columns(&new)));
        }
        if let Some(labels) = labels(&metas) {
            inserts.push(labels);
        }
        if !self.settings.is_empty() {
            inserts.push(settings(self.settings));
        }
        if inserts.is_empty() {
            return;
        }
        wire.push(Wire::Command(
            "SET LOCAL plan_cache_mode = force_generic_plan".into(),
        ));
        wire.extend(
            inserts
                .into_iter()
                .map(|(sql, params)| Wire::Statement(sql, params)),
        );
        wire.push(Wire::Command(
            "SET LOCAL plan_cache_mode = force_custom_plan".into(),
        ));
    }
}

/// The settings as one upsert.
fn settings(settings: BTreeMap<String, Setting>) -> (&'static str, OwnedParams) {
    let (mut keys, mut bytes, mut numbers) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in settings {
        keys.push(key);
        match value {
            Setting::Bytes(value) => {
                bytes.push(Some(value));
                numbers.push(None);
            }
            Setting::Int(number) => {
                bytes.push(None);
                numbers.push(Some(number));
            }
        }
    }
    (
        "INSERT INTO ledger_meta (key, value, int_value)
         SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[])
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, int_value = excluded.int_value",
        vec![Box::new(keys), Box::new(bytes), Box::new(numbers)],
    )
}

const INSERT_EVENTS: &str = "INSERT INTO events (seq, event_id, recorded_at, actor, secret_id, event_type, event_version, payload, prev_hash, hash, mac)
     SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bigint[], $4::text[], $5::bytea[], $6::text[],
                          $7::integer[], $8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[])";

/// The events as the columns of [`INSERT_EVENTS`], in seq order.
fn events(events: &[StoredEvent]) -> OwnedParams {
    fn column<T: ToSql + Sync + Send + 'static>(
        events: &[StoredEvent],
        f: impl Fn(&StoredEvent) -> T,
    ) -> Box<dyn ToSql + Sync + Send> {
        Box::new(events.iter().map(f).collect::<Vec<T>>())
    }
    vec![
        column(events, |e| e.seq as i64),
        column(events, |e| e.event_id.as_bytes().to_vec()),
        column(events, |e| e.recorded_at),
        column(events, |e| e.actor.clone()),
        column(events, |e| e.secret_id.map(|id| id.as_bytes().to_vec())),
        column(events, |e| e.event_type.clone()),
        column(events, |e| e.event_version as i32),
        column(events, |e| e.payload.clone()),
        column(events, |e| e.prev_hash.to_vec()),
        column(events, |e| e.hash.to_vec()),
        column(events, |e| e.mac.map(|m| m.to_vec())),
    ]
}

macro_rules! insert_catalog {
    () => {
        "INSERT INTO catalog (secret_id, namespace, name, status, updated_seq, meta)
         SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bytea[])"
    };
}
const INSERT_CATALOG: &str = insert_catalog!();
const UPSERT_CATALOG: &str = concat!(
    insert_catalog!(),
    " ON CONFLICT (secret_id) DO UPDATE SET namespace = excluded.namespace, name = excluded.name,
     status = excluded.status, updated_seq = excluded.updated_seq, meta = excluded.meta"
);

/// The catalog rows of `metas` (one per secret), as the columns of [`INSERT_CATALOG`].
fn catalog_columns(metas: &[&SecretMeta]) -> OwnedParams {
    vec![
        Box::new(ids(metas.iter().map(|m| &m.id))),
        Box::new(metas.iter().map(|m| m.namespace()).collect::<Vec<_>>()),
        Box::new(metas.iter().map(|m| m.name.clone()).collect::<Vec<_>>()),
        Box::new(metas.iter().map(|m| m.status.as_str()).collect::<Vec<_>>()),
        Box::new(metas.iter().map(|m| m.updated_seq as i64).collect::<Vec<_>>()),
        Box::new(metas.iter().map(|m| m.to_bytes().to_vec()).collect::<Vec<_>>()),
    ]
}

/// The label rows of `metas`, as one INSERT (their old rows are deleted before).
fn labels(metas: &[&SecretMeta]) -> Option<(&'static str, OwnedParams)> {
    let (mut keys, mut values, mut statuses, mut names, mut spaces, mut owners) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for meta in metas {
        for (key, value) in &meta.labels {
            keys.push(key.clone());
            values.push(value.clone());
            statuses.push(meta.status.as_str());
            names.push(meta.name.clone());
            spaces.push(meta.namespace());
            owners.push(meta.id.as_bytes().to_vec());
        }
    }
    (!keys.is_empty()).then(|| {
        (
            "INSERT INTO catalog_labels (key, value, status, name, namespace, secret_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])",
            vec![
                Box::new(keys) as Box<dyn ToSql + Sync + Send>,
                Box::new(values),
                Box::new(statuses),
                Box::new(names),
                Box::new(spaces),
                Box::new(owners),
            ],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(wire: &[Wire]) -> Vec<String> {
        wire.iter()
            .map(|w| match w {
                Wire::Statement(sql, _) => {
                    let kind = sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
                    match sql.contains("ON CONFLICT") {
                        true => format!("{kind} (upsert)"),
                        false => kind,
                    }
                }
                Wire::Command(sql) => sql.clone(),
            })
            .collect()
    }

    #[test]
    fn writes_merge_into_one_statement_per_table_between_statements_sent_as_they_are() {
        let id = SecretId::now_v7();
        let wire = merge(vec![
            Write::PutKey(id, vec![1]),
            Write::Setting("a".into(), Setting::Int(1)),
            Write::PutKey(SecretId::now_v7(), vec![2]),
            Write::Setting("a".into(), Setting::Int(2)),
            Write::Command("SAVEPOINT unit".into()),
            Write::DeleteKey(id),
        ]);
        assert_eq!(
            kinds(&wire),
            [
                "SET LOCAL plan_cache_mode = force_generic_plan",
                "INSERT INTO secret_keys",
                "INSERT INTO ledger_meta (upsert)",
                "SET LOCAL plan_cache_mode = force_custom_plan",
                "SAVEPOINT unit",
                "DELETE FROM secret_keys"
            ]
        );
    }

    fn meta(id: SecretId, name: &str) -> SecretMeta {
        SecretMeta {
            id,
            name: name.into(),
            scope: crate::event::Scope::Workspace,
            owner: "alice".into(),
            labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
            version: 1,
            status: crate::catalog::Status::Live,
            created_at: 0,
            created_by: "alice".into(),
            updated_at: 0,
            updated_seq: 1,
            value_seq: 1,
            fingerprints: BTreeMap::new(),
        }
    }

    fn event(secret: SecretId, event_type: &str) -> StoredEvent {
        StoredEvent {
            seq: 1,
            event_id: uuid::Uuid::now_v7(),
            recorded_at: 0,
            actor: "alice".into(),
            secret_id: Some(secret),
            event_type: event_type.into(),
            event_version: 1,
            payload: Vec::new(),
            prev_hash: [0; 32],
            hash: [0; 32],
            mac: None,
        }
    }

    /// Searches (the DELETEs) keep their per-call plans; the writes that search nothing share
    /// generic ones. A secret created in the run goes in by INSERT, after the rows that exist,
    /// which may give up the names it takes; only an existing secret's labels are deleted.
    #[test]
    fn deletes_go_first_and_new_catalog_rows_after_the_known_ones() {
        let (known, new) = (SecretId::now_v7(), SecretId::now_v7());
        let wire = merge(vec![
            Write::Event(event(known, "secret.renamed")),
            Write::Secret(meta(known, "old")),
            Write::DeleteKey(known),
            Write::Event(event(new, "secret.created")),
            Write::Secret(meta(new, "db")),
            Write::PutKey(new, vec![1]),
        ]);
        assert_eq!(
            kinds(&wire),
            [
                "DELETE FROM secret_keys",
                "DELETE FROM catalog_labels",
                "SET LOCAL plan_cache_mode = force_generic_plan",
                "INSERT INTO events",
                "INSERT INTO secret_keys",
                "INSERT INTO catalog (upsert)",
                "INSERT INTO catalog",
                "INSERT INTO catalog_labels",
                "SET LOCAL plan_cache_mode = force_custom_plan",
            ]
        );
    }

    #[test]
    fn a_key_put_then_deleted_is_only_deleted() {
        let id = SecretId::now_v7();
        let wire = merge(vec![Write::PutKey(id, vec![1]), Write::DeleteKey(id)]);
        assert_eq!(kinds(&wire), ["DELETE FROM secret_keys"]);
    }
}
