//! A real moto server (`moto_server` from PyPI's `moto[server]`) standing in for AWS Secrets
//! Manager, for the aws-sm sink's tests.

use std::process::Command;

use super::servers::{self, Server, MOTO};

/// Credentials moto accepts; set in the environment of whatever talks to it.
pub const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

pub fn url(server: &Server, extra: &str) -> String {
    format!(
        "aws-sm://us-east-1?endpoint=http://127.0.0.1:{}{extra}",
        server.port
    )
}

/// An AWS SDK client of moto's Secrets Manager, for a test to seed or tamper with what a sink
/// holds (with [`AWS_ENV`] set in the test's process).
#[cfg(feature = "aws")]
pub async fn secrets_manager(server: &Server) -> aws_sdk_secretsmanager::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{}", server.port))
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&config)
}

pub fn start() -> Server {
    start_on(servers::free_port_pair())
}

/// Start (or restart) a moto server on `port`; it keeps its data in memory.
pub fn start_on(port: u16) -> Server {
    let mut command = Command::new(servers::tool("moto_server", MOTO, "SLEDGER_MOTO_SERVER"));
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    servers::start("moto_server", command, port, "/moto-api/")
}
