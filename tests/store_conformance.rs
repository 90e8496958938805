//! The storage seam's conformance suite against the SQLite store.

mod common;

use sledger::store::conformance;
use sledger::store::sqlite::SqliteStore;
use sledger::store::Store;

#[test]
fn sqlite_store_conforms() {
    let dirs = std::cell::RefCell::new(Vec::new());
    conformance::run_all(&mut || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let store: Box<dyn Store> = Box::new(SqliteStore::create(&path).unwrap());
        dirs.borrow_mut().push(dir);
        let again = move || -> Box<dyn Store> { Box::new(SqliteStore::open(&path).unwrap()) };
        (store, Box::new(again))
    });
}

#[test]
fn postgres_store_conforms() {
    use sledger::store::postgres::{PgStore, PgUrl};
    let server = common::pg::Postgres::start();
    let mut databases = 0;
    conformance::run_all(&mut || {
        databases += 1;
        let url = PgUrl::parse(&server.database(&format!("conformance{databases}"))).unwrap();
        let store: Box<dyn Store> = Box::new(PgStore::create(&url).unwrap());
        let again = move || -> Box<dyn Store> { Box::new(PgStore::open(&url).unwrap()) };
        (store, Box::new(again))
    });
}
