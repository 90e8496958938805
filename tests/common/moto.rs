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

/// Run a Python `script` with boto3 (which moto brings) against moto, with [`AWS_ENV`] and the
/// server's port in `$MOTO_PORT`; what it printed. The interpreter is the one beside the
/// `moto_server` the tests run (their venv), else `python3`.
pub fn boto3(server: &Server, script: &str) -> String {
    let beside = servers::tool("moto_server", MOTO, "SLEDGER_MOTO_SERVER").with_file_name("python");
    let python = [beside, "python3".into()]
        .into_iter()
        .find(|python| {
            Command::new(python)
                .args(["-c", "import boto3"])
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .expect("boto3 comes with moto[server]: `pip install moto[server]` puts it beside moto_server");
    let out = Command::new(python)
        .args(["-c", script])
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .envs(AWS_ENV)
        .env("MOTO_PORT", server.port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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
