// Scratch: time sequential creates on a PostgreSQL ledger (not committed).
use sledger::store::Location;
use sledger::{Command, Ledger, LedgerSettings, MasterKey, Scope, SecretValues};
use std::collections::BTreeMap;
fn main() {
    let url = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let location = Location::parse(&url).unwrap();
    let master = MasterKey::generate();
    let mut ledger = Ledger::init(location, master, LedgerSettings::default()).unwrap();
    let start = std::time::Instant::now();
    for i in 0..n {
        let mut values = SecretValues::new();
        values.insert("password", "correct horse battery staple");
        ledger
            .execute(
                "bench",
                vec![Command::Create {
                    name: format!("s{i}"),
                    scope: Scope::Workspace,
                    labels: BTreeMap::from([("env".to_owned(), "bench".to_owned())]),
                    values,
                }],
            )
            .unwrap();
    }
    println!(
        "{:.3} ms per create",
        start.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}
