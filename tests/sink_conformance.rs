//! Every local sink passes the whole conformance suite.

mod common;

use sledger::crypto::SinkSealKey;
use sledger::sink::{conformance, SinkUrl, SqliteSink};

#[tokio::test]
async fn memory_sink_conforms() {
    let key = SinkSealKey::generate();
    conformance::run_all("mem", &|prefix| {
        SinkUrl::parse(&format!("memory://conformance?prefix={prefix}"))?.open(&key)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.db");
    SqliteSink::create(&path).unwrap();
    let key = SinkSealKey::generate();
    conformance::run_all("sq", &|prefix| {
        SinkUrl::parse(&format!("sqlite://{}?prefix={prefix}", path.display()))?.open(&key)
    })
    .await;
    // Values are sealed at rest: no plaintext in the file.
    let bytes = std::fs::read(&path).unwrap();
    let wal = std::fs::read(dir.path().join("sink.db-wal")).unwrap_or_default();
    for b in [bytes, wal] {
        assert!(
            !b.windows(5).any(|w| w == b"first"),
            "plaintext found in the sqlite sink file"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}&max_concurrency=8", common::exec_url(dir.path(), &[]));
    let key = SinkSealKey::generate();
    conformance::run_all("ex", &|prefix| {
        let with_prefix = format!("{url}&prefix={prefix}");
        SinkUrl::parse(&with_prefix)?.open(&key)
    })
    .await;
}

/// `max_rps` spaces a sink's operations across all callers: 21 concurrent reads at 20/s take
/// a second (the first starts at once), and the limited sink still behaves like the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rps_paces_every_caller() {
    let key = SinkSealKey::generate();
    let url = SinkUrl::parse("memory://paced?max_rps=20").unwrap();
    assert_eq!(url.max_rps, Some(20));
    let sink = url.open(&key).unwrap();
    conformance::put_get_update(&*sink).await;
    let started = std::time::Instant::now();
    let reads = (0..21).map(|_| {
        let sink = sink.clone();
        tokio::spawn(async move { sink.list().await })
    });
    for read in futures::future::join_all(reads).await {
        read.unwrap().unwrap();
    }
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(950) && took < std::time::Duration::from_secs(3),
        "{took:?}"
    );
    for bad in ["0", "x", "100001"] {
        let err = SinkUrl::parse(&format!("memory://p?max_rps={bad}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_rps must be a number from 1 to 100000"), "{err}");
    }
}

/// Two processes' sqlite sinks on one file: the newer seq always wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_racing_writers_leave_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.db");
    SqliteSink::create(&path).unwrap();
    let key = SinkSealKey::generate();
    let a = SqliteSink::open(&path, "race-", key.clone(), 4).unwrap();
    let b = SqliteSink::open(&path, "race-", key, 4).unwrap();
    conformance::racing_writers(&a, &b).await;
}
