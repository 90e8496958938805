//! A real drongo server (`drongo server` from PyPI's `drongo`, "the moto for GCP") standing in
//! for Google Secret Manager, for the gcp-sm sink's tests.

use std::process::Command;

use super::servers::{self, Server, DRONGO};

/// The emulator needs no credentials (the sink uses anonymous ones with `endpoint=`); this
/// keeps a developer's own Google credentials out of the tests.
pub const GCP_ENV: [(&str, &str); 1] = [("GOOGLE_APPLICATION_CREDENTIALS", "/dev/null")];

pub fn url(server: &Server, extra: &str) -> String {
    format!(
        "gcp-sm://sledger-test?endpoint=http://127.0.0.1:{}{extra}",
        server.port
    )
}

pub fn start() -> Server {
    start_on(servers::free_port_pair())
}

/// Start (or restart) a drongo server on `port`; it keeps its data in memory.
pub fn start_on(port: u16) -> Server {
    let mut command = Command::new(servers::tool("drongo", DRONGO, "SLEDGER_DRONGO"));
    command.args(["server", "--host", "127.0.0.1", "--port", &port.to_string()]);
    servers::start("drongo", command, port, "/drongo/health")
}
