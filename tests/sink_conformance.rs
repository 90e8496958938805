//! Every local sink passes the whole conformance suite.

mod common;

use std::sync::Arc;

use sledger::crypto::SinkSealKey;
use sledger::sink::{conformance, MemorySink, Sink, SinkUrl, SqliteSink};

#[tokio::test]
async fn memory_sink_conforms() {
    let backend = MemorySink::new("unused-");
    conformance::run_all("mem", &|prefix| {
        Ok(Arc::new(backend.with_prefix(prefix)) as Arc<dyn Sink>)
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
        Ok(Arc::new(SqliteSink::open(&path, prefix, key.clone(), 4)?) as Arc<dyn Sink>)
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
