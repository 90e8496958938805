//! The behaviour every [`Sink`] must show, as one suite (ARCHITECTURE.md). A sink's tests call
//! [`run_all`] with a function that opens a sink of that kind on one shared backend under a
//! given prefix. The suite panics (like any test) on the first violation.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{DeleteMode, Sink, SinkEntry, SinkRecord, ANCHOR_ID};
use crate::crypto::SecretValues;
use crate::error::Result;
use crate::event::Scope;
use crate::SecretId;

/// Opens a sink on the backend under test with the given object-name prefix.
pub type OpenSink<'a> = dyn Fn(&str) -> Result<Arc<dyn Sink>> + 'a;

fn record(id: SecretId, seq: u64, password: &str) -> SinkRecord {
    let mut values = SecretValues::new();
    values.insert("user", "svc");
    values.insert("password", password);
    SinkRecord {
        id,
        name: format!("app/db-{seq}"),
        scope: Scope::Workspace,
        owner: "conformance@test".into(),
        labels: BTreeMap::from([("env".into(), "test".into())]),
        seq,
        version: seq as u32,
        values,
    }
}

async fn sorted_list(sink: &dyn Sink) -> Vec<SinkEntry> {
    let mut l = sink.list().await.expect("list");
    l.sort();
    l
}

/// Run every check, each under its own prefix derived from `base` (letters, digits, `-`).
pub async fn run_all(base: &str, open: &OpenSink<'_>) {
    put_get_update(&*open(&format!("{base}a-")).unwrap()).await;
    idempotent_put(&*open(&format!("{base}b-")).unwrap()).await;
    soft_delete_and_purge(&*open(&format!("{base}c-")).unwrap()).await;
    late_puts_do_not_resurrect(&*open(&format!("{base}j-")).unwrap()).await;
    list_is_exact(&*open(&format!("{base}d-")).unwrap()).await;
    prefix_isolation(base, open).await;
    size_limit(&*open(&format!("{base}f-")).unwrap()).await;
    unicode(&*open(&format!("{base}g-")).unwrap()).await;
    concurrent_puts(open(&format!("{base}h-")).unwrap()).await;
    erase_lowers_the_seq(&*open(&format!("{base}k-")).unwrap()).await;
    the_anchor_is_kept_but_never_listed(&*open(&format!("{base}l-")).unwrap()).await;
    open(&format!("{base}i-"))
        .unwrap()
        .health()
        .await
        .expect("health of a working sink");
}

/// `erase` removes an object and its tombstone whatever seq they hold: afterwards a put with
/// a lower seq lands (the one way a seq goes down), and erasing an absent object is `Ok`.
pub async fn erase_lowers_the_seq(sink: &dyn Sink) {
    let (live, purged) = (SecretId::now_v7(), SecretId::now_v7());
    sink.erase(live).await.expect("erasing an absent object");
    sink.put(&record(live, 1 << 62, "planted")).await.unwrap();
    sink.put(&record(purged, 3, "x")).await.unwrap();
    sink.delete(purged, 1 << 62, DeleteMode::Purge).await.unwrap();
    for id in [live, purged] {
        sink.erase(id).await.unwrap();
        let genuine = record(id, 5, "genuine");
        sink.put(&genuine).await.unwrap();
        assert_eq!(
            sink.get(id).await.unwrap(),
            Some(genuine),
            "a put after erase lands whatever seq was held"
        );
    }
    let mut listed = sink.list().await.unwrap();
    listed.sort();
    let mut expected = vec![SinkEntry { id: live, seq: 5 }, SinkEntry { id: purged, seq: 5 }];
    expected.sort();
    assert_eq!(listed, expected);
}

pub async fn put_get_update(sink: &dyn Sink) {
    let id = SecretId::now_v7();
    assert_eq!(
        sink.get(id).await.unwrap(),
        None,
        "an unknown object reads as None"
    );
    let v1 = record(id, 1, "first");
    sink.put(&v1).await.unwrap();
    assert_eq!(
        sink.get(id).await.unwrap(),
        Some(v1.clone()),
        "get returns what put stored"
    );
    let v2 = record(id, 2, "second");
    sink.put(&v2).await.unwrap();
    assert_eq!(
        sink.get(id).await.unwrap(),
        Some(v2.clone()),
        "a newer seq replaces the object"
    );
    sink.put(&v1).await.unwrap();
    assert_eq!(
        sink.get(id).await.unwrap(),
        Some(v2),
        "an older seq never overwrites a newer one"
    );
}

pub async fn idempotent_put(sink: &dyn Sink) {
    let id = SecretId::now_v7();
    let r = record(id, 5, "same");
    sink.put(&r).await.unwrap();
    sink.put(&r).await.unwrap();
    assert_eq!(
        sink.get(id).await.unwrap(),
        Some(r),
        "the same record twice leaves the same state"
    );
    assert_eq!(sorted_list(sink).await, vec![SinkEntry { id, seq: 5 }]);
}

pub async fn soft_delete_and_purge(sink: &dyn Sink) {
    let (a, b) = (SecretId::now_v7(), SecretId::now_v7());
    sink.put(&record(a, 1, "a")).await.unwrap();
    sink.put(&record(b, 1, "b")).await.unwrap();
    sink.delete(a, 2, DeleteMode::Soft).await.unwrap();
    assert_eq!(
        sink.get(a).await.unwrap(),
        None,
        "a soft-deleted object reads as None"
    );
    assert!(
        !sorted_list(sink).await.iter().any(|e| e.id == a),
        "a soft-deleted object is not listed"
    );
    sink.delete(a, 2, DeleteMode::Soft).await.unwrap();
    let back = record(a, 3, "back");
    sink.put(&back).await.unwrap();
    assert_eq!(
        sink.get(a).await.unwrap(),
        Some(back),
        "a put after a soft delete brings it back"
    );
    sink.delete(b, 4, DeleteMode::Purge).await.unwrap();
    assert_eq!(sink.get(b).await.unwrap(), None);
    sink.delete(b, 4, DeleteMode::Purge).await.unwrap();
    sink.delete(SecretId::now_v7(), 5, DeleteMode::Purge)
        .await
        .expect("deleting an absent object is Ok");
    sink.delete(SecretId::now_v7(), 5, DeleteMode::Soft)
        .await
        .expect("deleting an absent object is Ok");
    assert_eq!(sorted_list(sink).await, vec![SinkEntry { id: a, seq: 3 }]);
}

/// A put that arrives after the delete that superseded it (two projectors racing) is ignored.
pub async fn late_puts_do_not_resurrect(sink: &dyn Sink) {
    for how in [DeleteMode::Soft, DeleteMode::Purge] {
        let id = SecretId::now_v7();
        sink.put(&record(id, 1, "v1")).await.unwrap();
        sink.delete(id, 3, how).await.unwrap();
        sink.put(&record(id, 2, "stale")).await.unwrap();
        assert_eq!(
            sink.get(id).await.unwrap(),
            None,
            "{how:?}: a stale put brought the object back"
        );
        // Also when the delete reached the sink before any put did.
        let fresh = SecretId::now_v7();
        sink.delete(fresh, 7, how).await.unwrap();
        sink.put(&record(fresh, 6, "stale")).await.unwrap();
        assert_eq!(
            sink.get(fresh).await.unwrap(),
            None,
            "{how:?}: a put older than the tombstone landed"
        );
        assert!(!sorted_list(sink)
            .await
            .iter()
            .any(|e| e.id == id || e.id == fresh));
        // A late soft delete does not hide a newer put.
        let live = SecretId::now_v7();
        sink.put(&record(live, 9, "newer")).await.unwrap();
        sink.delete(live, 8, DeleteMode::Soft).await.unwrap();
        assert_eq!(
            sink.get(live).await.unwrap().map(|r| r.seq),
            Some(9),
            "a stale soft delete hid a newer put"
        );
    }
}

pub async fn list_is_exact(sink: &dyn Sink) {
    let mut expected = Vec::new();
    for seq in 1..=25u64 {
        let id = SecretId::now_v7();
        sink.put(&record(id, seq, "x")).await.unwrap();
        expected.push(SinkEntry { id, seq });
    }
    expected.sort();
    assert_eq!(
        sorted_list(sink).await,
        expected,
        "list returns every live object with its seq"
    );
}

/// The anchor a projector leaves ([`ANCHOR_ID`], its seq a time in milliseconds) is stored
/// and read back like any object, and replaced by a newer one, but a sink opened from a URL
/// (wrapped in its layers) never lists it: `diff`, `reconcile`, replays and `import --from`
/// see secrets only.
pub async fn the_anchor_is_kept_but_never_listed(sink: &dyn Sink) {
    let at = 1_764_000_000_000u64;
    let mut anchor = record(ANCHOR_ID, at, "mac");
    anchor.name = "sledger-anchor".into();
    sink.put(&anchor).await.unwrap();
    let id = SecretId::now_v7();
    sink.put(&record(id, 3, "x")).await.unwrap();
    assert_eq!(
        sink.get(ANCHOR_ID).await.unwrap().map(|r| (r.seq, r.values)),
        Some((at, anchor.values.clone())),
        "the anchor reads back as written"
    );
    anchor.seq = at + 1;
    sink.put(&anchor).await.unwrap();
    assert_eq!(sink.get(ANCHOR_ID).await.unwrap().map(|r| r.seq), Some(at + 1));
    assert_eq!(
        sorted_list(sink).await,
        vec![SinkEntry { id, seq: 3 }],
        "the anchor is not listed as a secret"
    );
}

pub async fn prefix_isolation(base: &str, open: &OpenSink<'_>) {
    let mine = open(&format!("{base}e-")).unwrap();
    // One prefix unrelated, one that merely starts with ours.
    let strangers = [
        open(&format!("{base}other-")).unwrap(),
        open(&format!("{base}e-x-")).unwrap(),
    ];
    let foreign_id = SecretId::now_v7();
    let foreign = record(foreign_id, 9, "not yours");
    for s in &strangers {
        s.put(&foreign).await.unwrap();
    }
    let id = SecretId::now_v7();
    mine.put(&record(id, 1, "mine")).await.unwrap();
    assert_eq!(
        sorted_list(&*mine).await,
        vec![SinkEntry { id, seq: 1 }],
        "list shows only this prefix"
    );
    assert_eq!(
        mine.get(foreign_id).await.unwrap(),
        None,
        "get does not see other prefixes"
    );
    mine.delete(foreign_id, 10, DeleteMode::Soft).await.unwrap();
    mine.delete(foreign_id, 11, DeleteMode::Purge).await.unwrap();
    mine.delete(id, 12, DeleteMode::Purge).await.unwrap();
    for s in &strangers {
        assert_eq!(
            s.get(foreign_id).await.unwrap(),
            Some(foreign.clone()),
            "a foreign object survives everything"
        );
    }
}

pub async fn size_limit(sink: &dyn Sink) {
    let limit = sink.capabilities().max_value_bytes.min(64 * 1024);
    let mut values = SecretValues::new();
    // {"big":"…"} is 10 bytes of JSON around the value.
    values.insert("big", "x".repeat(limit - 10));
    assert_eq!(values.json_size(), limit);
    let id = SecretId::now_v7();
    let r = SinkRecord {
        values,
        ..record(id, 1, "")
    };
    sink.put(&r)
        .await
        .expect("a value exactly at the sink's declared limit is stored");
    assert_eq!(sink.get(id).await.unwrap(), Some(r));
}

pub async fn unicode(sink: &dyn Sink) {
    let id = SecretId::now_v7();
    let mut values = SecretValues::new();
    values.insert("password", "pässwörd-秘密-🔑 \"quoted\" \\ back\nnewline");
    values.insert("empty", "");
    let r = SinkRecord {
        name: "db/prod@eu+1=x".into(),
        labels: BTreeMap::from([("team".into(), "équipe-チーム".into())]),
        values,
        ..record(id, 1, "")
    };
    sink.put(&r).await.unwrap();
    assert_eq!(
        sink.get(id).await.unwrap(),
        Some(r),
        "unicode and escapes survive the round trip"
    );
}

pub async fn concurrent_puts(sink: Arc<dyn Sink>) {
    let ids: Vec<_> = (0..24).map(|_| SecretId::now_v7()).collect();
    let shared = SecretId::now_v7();
    // Newest first, so a sink without the seq guard ends with an old record.
    let tasks = ids.iter().enumerate().rev().map(|(n, &id)| {
        let sink = sink.clone();
        async move {
            sink.put(&record(id, n as u64 + 1, "c")).await.unwrap();
            sink.put(&record(shared, n as u64 + 1, "shared")).await.unwrap();
        }
    });
    futures::future::join_all(tasks).await;
    let listed = sorted_list(&*sink).await;
    assert_eq!(listed.len(), ids.len() + 1, "every concurrent put landed once");
    assert_eq!(
        sink.get(shared).await.unwrap().unwrap().seq,
        ids.len() as u64,
        "the highest seq wins"
    );
}

/// Two instances of a sink on one backend (two projector processes) writing one secret at
/// once, older and newer seq side by side, in both orders: the newer always ends up stored and
/// read back with its own values. Temporary errors are retried, as the projector would.
///
/// Not in [`run_all`]: it needs a backend that refuses a stale write across processes (a
/// compare-and-set covering the seq). AWS Secrets Manager and Azure Key Vault have none, Vault
/// checks-and-sets the data but not the metadata holding the seq, and drongo ignores the etag
/// GCP guards its labels with; sledger's projectors take turns per sink instead (see
/// `project`). The sqlite sink passes it.
pub async fn racing_writers(a: &dyn Sink, b: &dyn Sink) {
    async fn put_retrying(sink: &dyn Sink, record: &SinkRecord) {
        for attempt in 1.. {
            match sink.put(record).await {
                Ok(()) => return,
                Err(e) if e.is_temporary() && attempt < 10 => {
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await
                }
                Err(e) => panic!("put of seq {}: {e}", record.seq),
            }
        }
    }
    let id = SecretId::now_v7();
    for round in 0..8u64 {
        let (newer, older) = (round * 2 + 2, round * 2 + 1);
        let (first, second) = if round % 2 == 0 { (a, b) } else { (b, a) };
        let (newer_record, older_record) = (
            record(id, newer, &format!("v{newer}")),
            record(id, older, &format!("v{older}")),
        );
        futures::join!(
            put_retrying(first, &newer_record),
            put_retrying(second, &older_record)
        );
        for sink in [a, b] {
            let got = sink.get(id).await.unwrap().expect("the secret is there");
            assert_eq!(
                (got.seq, got.values.get("password")),
                (newer, Some(format!("v{newer}").as_str())),
                "round {round}: the older write won"
            );
        }
    }
}
