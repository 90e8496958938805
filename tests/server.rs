//! `sledger serve` over real HTTP on loopback: tokens and roles, the access log (fail-closed),
//! limits, TLS, shutdown and a crash under load. Every request goes through the binary a user
//! runs, with reqwest as the client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::serve::Server;
use common::Env;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn call(
    server: &Server,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client().request(method, server.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A `POST /v1/secrets` that announces a 2 MiB body and sends none of it: the server refuses
/// it on its Content-Length alone. (Sending the body too races the refusal: the server answers
/// and closes before reading it, so the client's write can fail, or the reset that a close
/// with unread data sends can drop the answer, before the client reads it.)
async fn announced_too_large(server: &Server, token: &str) -> (StatusCode, Value) {
    let address = server.base.trim_start_matches("http://").to_owned();
    let request = format!(
        "POST /v1/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        2 << 20
    );
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        String::from_utf8(answer).unwrap()
    })
    .await
    .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
        serde_json::from_str(body).unwrap_or(Value::String(answer.clone())),
    )
}

async fn issue(
    server: &Server,
    admin: &str,
    name: &str,
    role: &str,
    patterns: &[&str],
    expires: Option<u64>,
) -> String {
    let (status, body) = call(
        server,
        admin,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": name, "role": role, "patterns": patterns, "expires_in_seconds": expires})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn head_seq(server: &Server, admin: &str) -> u64 {
    let (status, log) = call(server, admin, Method::GET, "/v1/log?limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    log.as_array()
        .unwrap()
        .last()
        .map(|e| e["seq"].as_u64().unwrap())
        .unwrap_or(0)
}

async fn access_log(server: &Server, admin: &str) -> Vec<Value> {
    let (status, rows) = call(server, admin, Method::GET, "/v1/access-log?limit=10000", None).await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    rows.as_array().unwrap().clone()
}

/// Which roles may call each operation: the one table the matrix's expectations come from.
fn allowed(role: &str, operation: &str) -> bool {
    let reads_values = ["secret.get"];
    let mutates = [
        "secret.create",
        "secret.put",
        "secret.update",
        "secret.delete",
        "secret.undelete",
        "secret.rename",
        "secret.purge",
    ];
    let metadata = ["secret.list", "secret.history"];
    let audit = [
        "log.query",
        "log.stream",
        "access_log.query",
        "verify",
        "sink.list",
    ];
    match role {
        "admin" => true,
        "writer" => {
            reads_values.contains(&operation) || mutates.contains(&operation) || metadata.contains(&operation)
        }
        "reader" => reads_values.contains(&operation) || metadata.contains(&operation),
        "auditor" => metadata.contains(&operation) || audit.contains(&operation),
        _ => unreachable!(),
    }
}

/// A request body that is valid for `operation` (the answer may still be a 404 or 409: the
/// matrix only cares whether authorization let it through).
fn body_for(operation: &str, name: &str, i: usize, dir: &std::path::Path) -> Option<Value> {
    Some(match operation {
        "secret.create" => json!({"name": name, "values": {"k": "v"}}),
        "secret.put" => json!({"values": {"k": format!("v{i}")}}),
        "secret.update" => json!({"values": {"k": format!("u{i}")}}),
        "secret.rename" => json!({"new_name": format!("{name}-renamed{i}")}),
        "sink.add" => {
            json!({"name": format!("m{i}"), "url": format!("sqlite://{}/m{i}.db", dir.display()), "role": "standby"})
        }
        "sink.set_role" => json!({"role": "replica"}),
        "restore" => json!({"seq": 1, "dry_run": true}),
        "diff" | "reconcile" => json!({"sink": "local"}),
        "backup" => json!({"dry_run": true}),
        "migrate" => json!({"to": "local", "dry_run": true}),
        "token.create" => json!({"name": format!("t{i}"), "role": "reader", "patterns": ["x"]}),
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix_every_route_every_role() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().expect("first run prints an admin token");
    // The routes come from the server's own OpenAPI document, so a new route is covered too.
    let (status, doc) = call(&server, &admin, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !op["x-sledger-action"].is_null() {
                routes.push((
                    method.to_uppercase(),
                    path.clone(),
                    op["operationId"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    assert!(routes.len() >= 20, "{routes:?}");
    let mut tokens = Vec::new();
    // Admins and auditors reach the whole ledger, so they cover every name; the others cover
    // the team's.
    let covers_all = |role: &str| matches!(role, "admin" | "auditor");
    for role in ["admin", "writer", "reader", "auditor"] {
        let patterns: &[&str] = if covers_all(role) { &["*"] } else { &["team/*"] };
        tokens.push((
            role,
            issue(&server, &admin, &format!("{role}-team"), role, patterns, None).await,
        ));
    }
    let mut i = 0;
    for (role, token) in &tokens {
        for (method, path, operation) in &routes {
            for (name, matches) in [("team/s", true), ("other/s", false)] {
                i += 1;
                let secret = format!("{name}{i}");
                // Each secret exists before the request, so allowed requests mostly succeed.
                let (status, body) = call(
                    &server,
                    &admin,
                    Method::POST,
                    "/v1/secrets",
                    Some(json!({"name": secret, "values": {"k": "v"}})),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                let concrete = path.replace(
                    "{name}",
                    if path.starts_with("/v1/sinks") || path.starts_with("/v1/tokens") {
                        "nosuch"
                    } else {
                        &secret
                    },
                );
                let names_secret = path.contains("{name}")
                    && !path.starts_with("/v1/sinks")
                    && !path.starts_with("/v1/tokens")
                    || operation == "secret.create";
                let expected_allowed =
                    allowed(role, operation) && (!names_secret || matches || covers_all(role));
                let before_head = head_seq(&server, &admin).await;
                let before_access = access_log(&server, &admin).await.len();
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let request_body = if operation == "secret.create" {
                    Some(json!({"name": format!("{secret}-new"), "values": {"k": "v"}}))
                } else {
                    body_for(operation, &secret, i, env.dir.path())
                };
                let (status, body) = if operation == "log.stream" {
                    let response = client()
                        .request(method, server.url(&concrete))
                        .bearer_auth(token)
                        .send()
                        .await
                        .unwrap();
                    (response.status(), Value::Null)
                } else {
                    call(&server, token, method, &concrete, request_body).await
                };
                let what = format!("{role} {operation} {concrete}: {status} {body}");
                if expected_allowed {
                    assert!(
                        status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                        "{what}"
                    );
                    assert!(status.as_u16() < 500, "{what}");
                } else {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                    if operation != "log.stream" {
                        assert_eq!(body["error"]["code"], "forbidden", "{what}");
                    }
                    assert_eq!(
                        head_seq(&server, &admin).await,
                        before_head,
                        "a denied request appended: {what}"
                    );
                    let log = access_log(&server, &admin).await;
                    // The admin's own access-log query is not recorded; the denial is.
                    let new: Vec<_> = log[before_access..]
                        .iter()
                        .filter(|r| r["outcome"] == "denied")
                        .collect();
                    assert_eq!(new.len(), 1, "{what}: {new:?}");
                    assert_eq!(new[0]["principal"], format!("token:{role}-team"), "{what}");
                    assert_eq!(new[0]["action"], operation.as_str(), "{what}");
                }
            }
        }
    }
    // A missing or unknown token: 401, no detail, recorded.
    for token in ["", "sledger_not-a-real-token"] {
        let (status, body) = call(&server, token, Method::GET, "/v1/secrets", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
    let unauthenticated = access_log(&server, &admin)
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "unauthenticated")
        .count();
    assert_eq!(unauthenticated, 2);
    // Everything the server appended verifies, access log included.
    let (status, verified) = call(&server, &admin, Method::POST, "/v1/verify", None).await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert!(verified["access_log_rows"].as_u64().unwrap() > 50);
    assert!(server.stop().success());
    env.ok(&["verify"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn private_secrets_are_readable_only_by_their_owner() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let alice = issue(&server, &admin, "alice", "writer", &["*"], None).await;
    let bob = issue(&server, &admin, "bob", "writer", &["*"], None).await;
    let (status, body) = call(
        &server,
        &alice,
        Method::POST,
        "/v1/secrets",
        Some(json!({"name": "team/p", "scope": "private", "values": {"pw": "only-alice-knows"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["owner"], "token:alice");
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, body) = call(&server, &alice, Method::GET, "/v1/secrets/team/p", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["values"]["pw"], "only-alice-knows");
    for (who, token) in [("bob", &bob), ("admin", &admin)] {
        for path in ["/v1/secrets/team/p".to_owned(), format!("/v1/secrets/id:{id}")] {
            let (status, body) = call(&server, token, Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{who} {path}: {body}");
            assert!(!body.to_string().contains("only-alice-knows"));
        }
    }
    // Nor can they change it; lists do not show it.
    let (status, _) = call(
        &server,
        &bob,
        Method::PATCH,
        "/v1/secrets/team/p",
        Some(json!({"values": {"pw": "x"}})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = call(&server, &admin, Method::GET, "/v1/secrets", None).await;
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");
    // Nor does the access log show others the reads of it; its owner sees them.
    let rows = access_log(&server, &admin).await;
    assert!(!rows.iter().any(|r| r["secret_id"] == json!(id)), "{rows:?}");
    let (status, own) = call(&server, &alice, Method::GET, "/v1/access-log", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{own}");
    let auditor = issue(&server, &admin, "alice-audit", "auditor", &["*"], None).await;
    let (_, rows) = call(&server, &auditor, Method::GET, "/v1/access-log", None).await;
    assert!(!rows.to_string().contains(&id), "{rows}");
    // A sink holds it like every secret: an admin's diff and reconcile of a new standby keep
    // its id (it is repaired too) but not its name.
    let standby = json!({"name": "sb", "url": env.sqlite_url("sb.db"), "role": "standby"});
    let (status, body) = call(&server, &admin, Method::POST, "/v1/sinks", Some(standby)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for route in ["/v1/diff", "/v1/reconcile"] {
        let (status, body) = call(&server, &admin, Method::POST, route, Some(json!({"sink": "sb"}))).await;
        assert_eq!(status, StatusCode::OK, "{route}: {body}");
        let text = body.to_string();
        assert!(text.contains(&id) && !text.contains("team/p"), "{route}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_and_expired_tokens_are_refused_on_the_next_request() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let revoked = issue(&server, &admin, "soon-revoked", "reader", &["*"], None).await;
    let local = issue(&server, &admin, "revoked-locally", "reader", &["*"], None).await;
    // Issued last and used at once, so a slow machine does not expire it before its first use.
    let short = issue(&server, &admin, "short", "reader", &["*"], Some(3)).await;
    for token in [&short, &revoked, &local] {
        let (status, _) = call(&server, token, Method::GET, "/v1/secrets", None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, body) = call(&server, &admin, Method::DELETE, "/v1/tokens/soon-revoked", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = call(&server, &revoked, Method::GET, "/v1/secrets", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Revoked by another process holding the key: refused on the very next request too.
    env.ok(&["token", "revoke", "revoked-locally"]);
    let (status, _) = call(&server, &local, Method::GET, "/v1/secrets", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let expired_by = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = call(&server, &short, Method::GET, "/v1/secrets", None).await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            Instant::now() < expired_by,
            "a 3-second token still works after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A name is never issued again, and the refusal says how its token ended.
    for (name, ended) in [("short", "expired since"), ("soon-revoked", "revoked since")] {
        let again = json!({"name": name, "role": "reader", "patterns": ["*"]});
        let (status, body) = call(&server, &admin, Method::POST, "/v1/tokens", Some(again)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(ended),
            "{body}"
        );
    }
    // The registry says what happened; no token is ever shown again.
    let listed = env.ok(&["token", "list"]);
    assert!(
        listed.contains("soon-revoked") && listed.contains("revoked ") && listed.contains("expired"),
        "{listed}"
    );
    for token in [&short, &revoked, &local, &admin] {
        assert!(!listed.contains(token.as_str()));
        assert!(!common::contains(&env.ledger_bytes(), token));
    }
}

/// `sledger key rotate` run beside a server: the server finds the new key where it found the
/// old one and goes on serving reads, writes and projection with it, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_follows_a_key_rotation_made_beside_it() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let create = |name: &str, value: &str| json!({"name": name, "scope": "workspace", "labels": {}, "values": {"p": value}});
    let (status, body) = call(
        &server,
        &admin,
        Method::POST,
        "/v1/secrets",
        Some(create("before", "1")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for rotation in 0..2 {
        // The second time, twice in a row: the server follows to the key it ends with.
        for _ in 0..=rotation {
            env.ok(&["key", "rotate"]);
        }
        // Each request is answered (503 while the server has not loaded the new key yet), and
        // within a few seconds it reads and writes with the new key.
        let until = Instant::now() + Duration::from_secs(20);
        let name = format!("after-{rotation}");
        loop {
            // Reads meanwhile are served or get a 503 too, never a key error.
            let (status, body) = call(
                &server,
                &admin,
                Method::GET,
                "/v1/secrets/before?from=ledger",
                None,
            )
            .await;
            assert!(
                status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                "{status} {body}"
            );
            let (status, body) = call(
                &server,
                &admin,
                Method::POST,
                "/v1/secrets",
                Some(create(&name, "2")),
            )
            .await;
            if status == StatusCode::CREATED {
                break;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(
                Instant::now() < until,
                "the server never took the rotated key: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (secret, value) in [("before", "1"), (name.as_str(), "2")] {
            let (status, body) = call(
                &server,
                &admin,
                Method::GET,
                &format!("/v1/secrets/{secret}?from=ledger"),
                None,
            )
            .await;
            assert_eq!(
                (status, &body["values"]["p"]),
                (StatusCode::OK, &json!(value)),
                "{body}"
            );
        }
    }
    // The projector went on with the new key too: the primary holds the last write.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = call(
            &server,
            &admin,
            Method::GET,
            "/v1/secrets/after-1?from=primary",
            None,
        )
        .await;
        if status == StatusCode::OK {
            assert_eq!(body["values"]["p"], json!("2"), "{body}");
            break;
        }
        assert!(
            Instant::now() < until,
            "the primary never got the write made after the rotation: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.stop().success());
    env.ok(&["verify"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_fail_closed_when_the_access_log_cannot_be_written() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let (status, _) = call(
        &server,
        &admin,
        Method::POST,
        "/v1/secrets",
        Some(json!({"name": "db", "values": {"pw": "fail-closed-value"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let raw = rusqlite::Connection::open(&env.ledger).unwrap();
    raw.execute_batch("CREATE TRIGGER block_access BEFORE INSERT ON access_log BEGIN SELECT RAISE(ABORT, 'blocked by the test'); END;")
        .unwrap();
    let (status, body) = call(&server, &admin, Method::GET, "/v1/secrets/db", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "audit_unavailable");
    assert!(!body.to_string().contains("fail-closed-value"));
    // Writes still work.
    let (status, body) = call(
        &server,
        &admin,
        Method::PATCH,
        "/v1/secrets/db",
        Some(json!({"values": {"pw": "next"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    raw.execute_batch("DROP TRIGGER block_access").unwrap();
    let (status, body) = call(&server, &admin, Method::GET, "/v1/secrets/db", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["values"]["pw"], "next");
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_body_limit_slow_clients_and_rate_limits() {
    let env = Env::empty();
    let server = Server::start(&env, &["--header-timeout", "1s", "--rate-limit", "5"]);
    let admin = server.admin.clone().unwrap();
    let other = issue(&server, &admin, "other", "reader", &["*"], None).await;
    // 2 MiB body: 413, nothing appended.
    tokio::time::sleep(Duration::from_secs(1)).await; // let the admin's bucket refill
    let before = head_seq(&server, &admin).await;
    let (status, answer) = announced_too_large(&server, &admin).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(head_seq(&server, &admin).await, before);
    // A client that sends its headers one byte at a time is cut off.
    let address = server.base.trim_start_matches("http://").to_owned();
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n".iter() {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
            if started.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        (started.elapsed(), rest)
    });
    let (took, answer) = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(
        took < Duration::from_secs(8),
        "the slow client was served for {took:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A flood from one token is limited; another token is still served.
    // One client, so the 40 requests reach the limiter together (bursts of 10, 5 more a second).
    let flooding = client();
    let flood = (0..40).map(|_| flooding.get(server.url("/v1/secrets")).bearer_auth(&admin).send());
    let limited = futures::future::join_all(flood)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().status() == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        limited >= 20,
        "only {limited} of 40 flooding requests were limited"
    );
    let (status, _) = call(&server, &other, Method::GET, "/v1/secrets", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_private_ca_and_plain_http_only_on_loopback() {
    let env = Env::empty();
    let cert = env.path("cert.pem");
    let key = env.path("key.pem");
    // A private CA, and a server certificate it signed.
    let ca = env.path("ca.pem");
    let extensions = env.path("leaf.ext");
    std::fs::write(
        &extensions,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let dir = env.dir.path();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sledger test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
    ] {
        let made = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for this test (apt-get install openssl)");
        assert!(
            made.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    // Plain HTTP beyond loopback is refused, saying why.
    let refused = env.fails(&["serve", "--listen", "0.0.0.0:0"], 2);
    assert!(refused.contains("--tls-cert"), "{refused}");
    assert!(!env.ledger.exists(), "a refused serve created a ledger");

    let server = Server::start(
        &env,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let admin = server.admin.clone().unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let trusted = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let response = trusted
        .get(server.url("/v1/secrets"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let untrusted = reqwest::Client::new().get(server.url("/healthz")).send().await;
    let error = untrusted.expect_err("a client that does not trust the CA must fail");
    let chain = format!("{error:?}");
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_no_acknowledged_write() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (url, token) = (server.url("/v1/secrets"), admin.clone());
            tokio::spawn(async move {
                let client = client();
                let mut acknowledged = Vec::new();
                for i in 0.. {
                    let name = format!("w{w}/s{i}");
                    let value = format!("value-{w}-{i}");
                    let sent = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"name": name, "values": {"v": value}}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == StatusCode::CREATED => acknowledged.push((name, value)),
                        _ => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    assert!(
        acknowledged.len() > 50,
        "only {} writes before the kill",
        acknowledged.len()
    );
    drop(server);
    env.ok(&["verify"]);
    let restarted = Server::start(&env, &[]);
    for (name, value) in &acknowledged {
        let (status, body) = call(
            &restarted,
            &admin,
            Method::GET,
            &format!("/v1/secrets/{name}?from=ledger"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["values"]["v"], value.as_str());
    }
    // The primary converges: its projector runs in the restarted server.
    let started = Instant::now();
    loop {
        let (_, sinks) = call(&restarted, &admin, Method::GET, "/v1/sinks", None).await;
        if sinks[0]["lag"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the primary never caught up: {sinks}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = call(
        &restarted,
        &admin,
        Method::GET,
        &format!("/v1/secrets/{}", acknowledged[0].0),
        None,
    )
    .await;
    assert_eq!(body["source"]["kind"], "sink");
    assert!(restarted.stop().success());
}

#[test]
fn tokens_from_the_cli_are_shown_once_and_listed_without_the_token() {
    let env = Env::new();
    let out = env.ok(&[
        "token",
        "create",
        "--name",
        "ci-deploy",
        "--role",
        "reader",
        "--pattern",
        "prod/*",
        "--expires",
        "30d",
    ]);
    let token = out.trim();
    assert!(token.starts_with("sledger_") && token.len() > 40, "{out}");
    let listed = env.json(&["token", "list"]);
    assert_eq!(listed[0]["name"], "ci-deploy");
    assert_eq!(listed[0]["role"], "reader");
    assert_eq!(listed[0]["patterns"], json!(["prod/*"]));
    assert!(!listed.to_string().contains(token));
    assert!(!common::contains(&env.ledger_bytes(), token));
    env.fails(
        &[
            "token",
            "create",
            "--name",
            "ci-deploy",
            "--role",
            "reader",
            "--pattern",
            "x",
        ],
        4,
    );
    env.fails(
        &[
            "token",
            "create",
            "--name",
            "x",
            "--role",
            "root",
            "--pattern",
            "x",
        ],
        2,
    );
    env.fails(&["token", "revoke", "nosuch"], 3);
    // A name once issued says so, revoked or not; revoking twice says it is done already.
    let taken = env.fails(
        &[
            "token",
            "create",
            "--name",
            "ci-deploy",
            "--role",
            "reader",
            "--pattern",
            "x",
        ],
        4,
    );
    assert!(
        taken.contains("a token named \"ci-deploy\" was issued before"),
        "{taken}"
    );
    env.ok(&["token", "revoke", "ci-deploy"]);
    let twice = env.fails(&["token", "revoke", "ci-deploy"], 4);
    assert!(twice.contains("revoked already"), "{twice}");
    let taken = env.fails(&["sink", "add", "local", &env.sqlite_url("other.db")], 4);
    assert!(
        taken.contains("a sink named \"local\" is attached already"),
        "{taken}"
    );
    let log = env.ok(&["log", "--type", "token.issued"]);
    assert!(log.contains("token ci-deploy issued: reader on prod/*"), "{log}");
    env.ok(&["verify"]);
}

/// A version from before a rename is read under its name then: a token whose patterns do not
/// cover that name gets 403, not the old value.
#[tokio::test(flavor = "multi_thread")]
async fn old_versions_stay_within_the_patterns_of_their_name_then() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let (status, _) = call(
        &server,
        &admin,
        Method::POST,
        "/v1/secrets",
        Some(json!({"name": "prod/root", "values": {"pw": "prod-only-value"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(
        &server,
        &admin,
        Method::POST,
        "/v1/rename/prod/root",
        Some(json!({"new_name": "team/x"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &server,
        &admin,
        Method::PATCH,
        "/v1/secrets/team/x",
        Some(json!({"values": {"pw": "team-value"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let team = issue(&server, &admin, "team", "reader", &["team/*"], None).await;
    let (status, body) = call(&server, &team, Method::GET, "/v1/secrets/team/x", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["values"]["pw"], "team-value");
    let (status, body) = call(&server, &team, Method::GET, "/v1/secrets/team/x?version=1", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(!body.to_string().contains("prod-only-value"));
    // Nor is the name then told: not in the refusal, not in the history.
    assert!(!body.to_string().contains("prod/root"), "{body}");
    let (status, history) = call(&server, &team, Method::GET, "/v1/history/team/x", None).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert!(!history.to_string().contains("prod/root"), "{history}");
    let names: Vec<&Value> = history.as_array().unwrap().iter().map(|e| &e["name"]).collect();
    assert_eq!(
        names,
        [&Value::Null, &json!("team/x"), &json!("team/x")],
        "{history}"
    );
    assert!(
        history[1]["detail"].as_str().unwrap().ends_with("→ team/x"),
        "{history}"
    );
    let (_, full) = call(&server, &admin, Method::GET, "/v1/history/team/x", None).await;
    assert_eq!(full[1]["detail"], "renamed prod/root → team/x", "{full}");
    // Token names are never reused: a new token cannot inherit a revoked one's private secrets.
    let (status, _) = call(&server, &admin, Method::DELETE, "/v1/tokens/team", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &server,
        &admin,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "team", "role": "reader", "patterns": ["*"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// The audit log over HTTP leaves out other owners' private secrets (an auditor sees the
/// workspace's events and its own private ones).
#[tokio::test(flavor = "multi_thread")]
async fn the_log_hides_other_owners_private_secrets() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let alice = issue(&server, &admin, "alice", "writer", &["*"], None).await;
    let auditor = issue(&server, &admin, "audit", "auditor", &["*"], None).await;
    let (status, _) = call(
        &server,
        &alice,
        Method::POST,
        "/v1/secrets",
        Some(json!({"name": "alice/diary", "scope": "private", "values": {"k": "v"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(
        &server,
        &alice,
        Method::POST,
        "/v1/secrets",
        Some(json!({"name": "shared/db", "values": {"k": "v"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, seen) = call(&server, &auditor, Method::GET, "/v1/log", None).await;
    let text = seen.to_string();
    assert!(
        text.contains("shared/db") && !text.contains("alice/diary"),
        "{text}"
    );
    let (_, own) = call(&server, &alice, Method::GET, "/v1/log?type=secret.created", None).await;
    // (a writer may not read the log; the owner's view is the CLI's, with the key)
    assert!(own["error"]["code"] == "forbidden", "{own}");
}

/// `id:` references: a refusal names the reference, never the name behind it, and looks like
/// an unknown id; a deleted secret's history and undelete work by id.
#[tokio::test(flavor = "multi_thread")]
async fn id_references_reveal_no_names_and_reach_deleted_secrets() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let (_, created) = call(
        &server,
        &admin,
        Method::POST,
        "/v1/secrets",
        Some(json!({"name": "prod/hidden-name", "values": {"k": "v"}})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let team = issue(&server, &admin, "team", "reader", &["team/*"], None).await;
    let (status, body) = call(&server, &team, Method::GET, &format!("/v1/secrets/id:{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!body.to_string().contains("hidden-name"), "{body}");
    // Answered as an id no secret has, so a token cannot find out which ids exist.
    let unknown = uuid::Uuid::now_v7().to_string();
    let (unknown_status, unknown_body) = call(
        &server,
        &team,
        Method::GET,
        &format!("/v1/secrets/id:{unknown}"),
        None,
    )
    .await;
    assert_eq!(
        (unknown_status, unknown_body.to_string().replace(&unknown, "ID")),
        (status, body.to_string().replace(&id, "ID"))
    );
    let denials = access_log(&server, &admin).await;
    assert!(denials
        .iter()
        .any(|r| r["principal"] == "token:team" && r["outcome"] == "denied"));
    assert!(!denials
        .iter()
        .any(|r| r["principal"] == "token:team" && r.to_string().contains("hidden-name")));
    let (status, _) = call(
        &server,
        &admin,
        Method::DELETE,
        &format!("/v1/secrets/id:{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, history) = call(
        &server,
        &admin,
        Method::GET,
        &format!("/v1/history/id:{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history.as_array().unwrap().len(), 2);
    let (status, body) = call(
        &server,
        &admin,
        Method::POST,
        &format!("/v1/undelete/id:{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `force_ledger` makes a sink match the ledger even where it holds objects beyond the
/// ledger's head, overwriting them: the log records that decision and the token that made
/// it, before anything is written. A caller without the right records nothing.
#[tokio::test(flavor = "multi_thread")]
async fn forcing_a_sink_to_the_ledger_is_in_the_log_with_its_caller() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let reader = issue(&server, &admin, "auditor", "reader", &["*"], None).await;
    let force = json!({"sink": "local", "force_ledger": true});
    let (status, _) = call(
        &server,
        &reader,
        Method::POST,
        "/v1/reconcile",
        Some(force.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = call(&server, &admin, Method::POST, "/v1/reconcile", Some(force)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, log) = call(&server, &admin, Method::GET, "/v1/log?type=sink.forced", None).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["actor"], "token:admin", "{log:?}");
    assert!(
        log[0]["detail"].as_str().unwrap().contains("sink local"),
        "{log:?}"
    );
}

/// A log cut short under a running server: `POST /v1/verify` names the sink that witnessed the
/// longer log, as `sledger verify` does (one library check answers both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_over_http_names_the_sink_that_witnessed_a_longer_log() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    for i in 0..5 {
        let (status, body) = call(
            &server,
            &admin,
            Method::POST,
            "/v1/secrets?wait_ms=10000",
            Some(json!({"name": format!("s{i}"), "values": {"k": "1"}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = call(&server, &admin, Method::POST, "/v1/verify", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let witnessed = body["events"].as_u64().unwrap();
    let local = body["witnesses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["sink"] == "local")
        .cloned()
        .unwrap();
    assert_eq!(local["anchor"]["seq"], witnessed, "{local}");

    env.raw()
        .execute("DELETE FROM events WHERE seq > ?1", [(witnessed - 2) as i64])
        .unwrap();
    let (status, body) = call(&server, &admin, Method::POST, "/v1/verify", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let message = body.to_string();
    assert!(
        message.contains("integrity")
            && message.contains(&format!("sink local witnessed seq {witnessed}"))
            && message.contains(&format!("this ledger ends at seq {}", witnessed - 2))
            && message.contains("the log was truncated"),
        "{message}"
    );
}

/// A counter `/metrics` shows.
async fn metric(server: &Server, admin: &str, name: &str) -> u64 {
    let (status, text) = call(server, admin, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let text = text.as_str().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The write requests the server's group commit took.
async fn commit_requests(server: &Server, admin: &str) -> u64 {
    metric(server, admin, "sledger_commit_requests").await
}

/// The appends the append-latency histogram timed.
async fn timed_appends(server: &Server, admin: &str) -> u64 {
    metric(server, admin, "sledger_append_duration_seconds_count").await
}

/// The operations the server runs for a caller append through its group commit, like any
/// other write, so its counters (and subscribers) see them: `POST /v1/migrate` to a new URL is
/// two requests (attach, promote), a refused `POST /v1/sinks` one that leaves no file behind.
/// The append-latency histogram times each append that succeeded.
#[tokio::test(flavor = "multi_thread")]
async fn operations_through_the_server_append_through_its_group_commit() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let create = json!({"name": "app/db", "values": {"pw": "one"}});
    let (status, body) = call(&server, &admin, Method::POST, "/v1/secrets", Some(create)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let before = commit_requests(&server, &admin).await;
    let timed = timed_appends(&server, &admin).await;
    let taken = json!({"name": "local", "url": format!("sqlite://{}", env.path("fresh.db").display())});
    let (status, body) = call(&server, &admin, Method::POST, "/v1/sinks", Some(taken)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(!env.path("fresh.db").exists());
    assert_eq!(commit_requests(&server, &admin).await, before + 1);

    // A plug-in would run on the server's host as the server: refused over HTTP, nothing run.
    let planted = env.path("planted");
    let exec = format!("exec:///bin/sh?arg=-c&arg=touch%20{}", planted.display());
    let (status, body) = call(
        &server,
        &admin,
        Method::POST,
        "/v1/sinks",
        Some(json!({"name": "x", "url": exec, "role": "standby"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("sledger sink add"), "{body}");
    let (status, body) = call(
        &server,
        &admin,
        Method::POST,
        "/v1/migrate",
        Some(json!({"to": exec, "name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(!planted.exists());
    assert_eq!(commit_requests(&server, &admin).await, before + 1);

    let to = json!({"to": format!("sqlite://{}", env.path("new.db").display()), "name": "new"});
    let (status, body) = call(&server, &admin, Method::POST, "/v1/migrate", Some(to)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["steps"].as_array().unwrap().len(), 5, "{body}");
    assert_eq!(commit_requests(&server, &admin).await, before + 3);
    assert_eq!(timed_appends(&server, &admin).await, timed + 2);
    let (_, sinks) = call(&server, &admin, Method::GET, "/v1/sinks", None).await;
    let role = |name: &str| {
        sinks
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["role"]
            .clone()
    };
    assert_eq!(
        (role("new"), role("local")),
        (json!("primary"), json!("backup")),
        "{sinks}"
    );
    let (status, read) = call(&server, &admin, Method::GET, "/v1/secrets/app/db", None).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["source"]["name"], "new", "{read}");
    assert_eq!(read["values"]["pw"], "one", "{read}");
}

/// A token cannot make the server write a sqlite file wherever the server may: sinks attached
/// through the API stay in its sink directory (the ledger's, or `--sink-dir`), symlinks
/// followed; nothing is appended or made for a refused one.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_sinks_over_the_api_stay_in_the_sink_directory() {
    let env = Env::empty();
    let elsewhere = tempfile::tempdir().unwrap();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let sqlite = |path: &std::path::Path| format!("sqlite://{}", path.display());
    std::os::unix::fs::symlink(elsewhere.path(), env.path("link")).unwrap();
    let head = head_seq(&server, &admin).await;
    for outside in [
        elsewhere.path().join("x.db"),
        env.path("link/x.db"),
        env.path("../x.db"),
    ] {
        for (route, body) in [
            ("/v1/sinks", json!({"name": "x", "url": sqlite(&outside)})),
            ("/v1/migrate", json!({"to": sqlite(&outside), "name": "x"})),
        ] {
            let (status, answer) = call(&server, &admin, Method::POST, route, Some(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{route} {outside:?}: {answer}");
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("--sink-dir"),
                "{answer}"
            );
        }
    }
    // Nor reach a host, or read a file or variable of the server, its operator did not name.
    for (url, named) in [
        ("vault://127.0.0.1:1/kv?tls=off", "--sink-host 127.0.0.1:1"),
        (
            "aws-sm://us-east-1?endpoint=http://127.0.0.1:1",
            "--sink-host 127.0.0.1:1",
        ),
        (
            "aws-sm://us-east-1?access_key_env=HOME&secret_key_env=HOME",
            "access_key_env=",
        ),
        (
            "vault://127.0.0.1:1/kv?tls=off&token_file=/etc/hostname",
            "token_file=",
        ),
        // Written to end like a Key Vault, read by a URL parser as another host.
        (
            "azure-kv://evil.example#.vault.azure.net",
            "expected azure-kv://VAULT_HOST",
        ),
        (
            "azure-kv://evil.example\\.vault.azure.net",
            "expected azure-kv://VAULT_HOST",
        ),
    ] {
        let body = json!({"name": "x", "url": url});
        let (status, answer) = call(&server, &admin, Method::POST, "/v1/sinks", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(named),
            "{url}: {answer}"
        );
    }
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert_eq!(head_seq(&server, &admin).await, head);
    let inside = json!({"name": "nested", "url": sqlite(&env.path("inside.db"))});
    let (status, answer) = call(&server, &admin, Method::POST, "/v1/sinks", Some(inside)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    server.stop();

    let server = Server::start(
        &env,
        &[
            "--sink-dir",
            elsewhere.path().to_str().unwrap(),
            "--sink-host",
            "127.0.0.1:1",
        ],
    );
    // An allowed host passes the policy: what answers is the (absent) Vault, not a refusal.
    let vault = json!({"name": "v", "url": "vault://127.0.0.1:1/kv?tls=off"});
    let (status, answer) = call(&server, &admin, Method::POST, "/v1/sinks", Some(vault)).await;
    assert!(!answer.to_string().contains("--sink-host"), "{status} {answer}");
    let there = json!({"name": "there", "url": sqlite(&elsewhere.path().join("there.db"))});
    let (status, answer) = call(&server, &admin, Method::POST, "/v1/sinks", Some(there)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let beside = json!({"name": "beside", "url": sqlite(&env.path("beside.db"))});
    let (status, answer) = call(&server, &admin, Method::POST, "/v1/sinks", Some(beside)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    server.stop();
}

/// A request refused for its role (a reader writing) is in the access log with the secret it
/// named, like one refused for its name patterns.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_refusal_is_recorded_with_the_secret_named() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let reader = issue(&server, &admin, "ro", "reader", &["*"], None).await;
    let update = json!({"values": {"pw": "x"}});
    let (status, body) = call(
        &server,
        &reader,
        Method::PATCH,
        "/v1/secrets/app/db",
        Some(update),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let denied: Vec<Value> = access_log(&server, &admin)
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        (&denied[0]["principal"], &denied[0]["secret"]),
        (&json!("token:ro"), &json!("app/db")),
        "{denied:?}"
    );
    // Paging through the access log: after a seq come the next rows, not the last ones.
    for _ in 0..5 {
        let update = json!({"values": {"pw": "x"}});
        call(
            &server,
            &reader,
            Method::PATCH,
            "/v1/secrets/app/db",
            Some(update),
        )
        .await;
    }
    let (status, page) = call(
        &server,
        &admin,
        Method::GET,
        "/v1/access-log?after_seq=1&limit=2",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let seqs: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3], "{page}");
}

/// A write is durable in the ledger whatever its primary does: when the primary applied it but
/// cannot be read back (its file is gone), the write still answers 201, saying so.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_whose_primary_cannot_be_read_back_still_succeeds() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let sink_file = env.ledger.with_extension("sink.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut file = sink_file.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(file));
    }
    let create = json!({"name": "app/durable", "values": {"k": "v"}});
    let (status, body) = call(
        &server,
        &admin,
        Method::POST,
        "/v1/secrets?wait_ms=2000",
        Some(create),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        body["primary"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing")),
        "{body}"
    );
    let (status, read) = call(
        &server,
        &admin,
        Method::GET,
        "/v1/secrets/app/durable?from=ledger",
        None,
    )
    .await;
    assert_eq!(
        (status, &read["values"]["k"]),
        (StatusCode::OK, &json!("v")),
        "{read}"
    );
}

/// SIGTERM ends an open `/v1/log/stream` at once (a stream never ends on its own), instead of
/// holding the shutdown for the whole request timeout.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_open_log_streams() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let response = client()
        .get(server.url("/v1/log/stream"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stream held the shutdown for {:?}",
        started.elapsed()
    );
    drop(response);
}

/// Requests refused before any handler runs get the API's error document too.
#[tokio::test(flavor = "multi_thread")]
async fn errors_before_a_handler_are_json_too() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let (status, answer) = announced_too_large(&server, &admin).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{answer}"
    );
    for (method, path, body, status, code) in [
        (Method::GET, "/v1/nope", None, StatusCode::NOT_FOUND, "not_found"),
        (
            Method::GET,
            "/v1/secrets?limit=abc",
            None,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            Method::DELETE,
            "/v1/tokens",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid",
        ),
    ] {
        let (got, answer) = call(&server, &admin, method, path, body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {answer}"
        );
    }
}

/// Times in log filters are read as RFC 3339 too; inputs that cannot mean anything are
/// refused, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn filters_and_token_requests_take_what_they_say() {
    let env = Env::empty();
    let server = Server::start(&env, &[]);
    let admin = server.admin.clone().unwrap();
    let (status, log) = call(
        &server,
        &admin,
        Method::GET,
        "/v1/log?since=2020-01-01T00:00:00Z",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert!(!log.as_array().unwrap().is_empty(), "{log}");
    let (status, log) = call(
        &server,
        &admin,
        Method::GET,
        "/v1/log?since=2999-01-01T00:00:00Z",
        None,
    )
    .await;
    assert_eq!((status, log), (StatusCode::OK, json!([])));
    let (status, answer) = call(&server, &admin, Method::GET, "/v1/log?since=yesterday", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("RFC 3339"),
        "{answer}"
    );
    let (status, answer) = call(&server, &admin, Method::GET, "/v1/secrets?limit=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // An outcome the access log never records is a mistake, not an empty answer.
    let (status, answer) = call(
        &server,
        &admin,
        Method::GET,
        "/v1/access-log?outcome=Denied",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("denied"),
        "{answer}"
    );
    let (status, answer) = call(
        &server,
        &admin,
        Method::GET,
        "/v1/access-log?outcome=denied",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // The scheme of the Authorization header is case-insensitive.
    let lower = client()
        .get(server.url("/v1/secrets"))
        .header("authorization", format!("bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK);
    for token in [
        json!({"name": "t0", "role": "admin", "patterns": ["app/*"]}),
        json!({"name": "t3", "role": "auditor", "patterns": ["app/*"]}),
        json!({"name": "t1", "role": "reader", "patterns": ["bad pattern"]}),
        json!({"name": "t2", "role": "reader", "patterns": ["x"], "expires_in_seconds": u64::MAX / 2}),
    ] {
        let (status, answer) = call(&server, &admin, Method::POST, "/v1/tokens", Some(token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }
    // A new name no secret can have is a bad request, though the token's patterns do not
    // cover it either.
    let writer = issue(&server, &admin, "app-writer", "writer", &["app/*"], None).await;
    let create = json!({"name": "app/db", "values": {"pw": "one"}});
    let (status, answer) = call(&server, &writer, Method::POST, "/v1/secrets", Some(create)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let rename = json!({"new_name": "db copy"});
    let (status, answer) = call(&server, &writer, Method::POST, "/v1/rename/app/db", Some(rename)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid", "{answer}");
    // A URL path drops `.` and `..` segments: such a name could be created but never read
    // back through the server, so it is refused.
    for name in ["app/../db", "app/.", "app/./db"] {
        let create = json!({"name": name, "values": {"pw": "one"}});
        let (status, answer) = call(&server, &writer, Method::POST, "/v1/secrets", Some(create)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("path segment"),
            "{answer}"
        );
    }
}

/// Connections are bounded before any request: one that sends nothing is closed after the
/// header timeout, one left idle after a response after the idle timeout, and past
/// `--max-connections` new ones are closed at once. A log stream with nothing to send is kept
/// open by its blank lines, and still delivers what comes later.
#[tokio::test(flavor = "multi_thread")]
async fn silent_and_surplus_connections_are_closed_and_log_streams_stay_open() {
    let env = Env::empty();
    let server = Server::start(
        &env,
        &[
            "--header-timeout",
            "1s",
            "--request-timeout",
            "1s",
            "--idle-timeout",
            "2s",
            "--max-connections",
            "3",
        ],
    );
    let admin = server.admin.clone().unwrap();
    let address = server.base.trim_start_matches("http://").to_owned();
    // Closed by the server: how long it took to read the end, at most 10 s.
    let closed_after = |mut stream: TcpStream| {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        started.elapsed()
    };
    let silent = TcpStream::connect(&address).unwrap();
    let mut idle = TcpStream::connect(&address).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Two open, and a third is the log stream: a fourth is closed at once.
    let mut stream = client()
        .get(server.url("/v1/log/stream"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let surplus = TcpStream::connect(&address).unwrap();
    let (silent, idle, surplus) = tokio::task::spawn_blocking(move || {
        let surplus = closed_after(surplus);
        (closed_after(silent), closed_after(idle), surplus)
    })
    .await
    .unwrap();
    assert!(surplus < Duration::from_millis(500), "surplus {surplus:?}");
    assert!(silent < Duration::from_secs(3), "silent {silent:?}");
    assert!(idle < Duration::from_secs(4), "idle {idle:?}");

    // The stream outlived the idle timeout, kept open by blank lines; its events still come.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut received = String::new();
    let create = json!({"name": "late", "values": {"k": "v"}});
    let (status, body) = call(&server, &admin, Method::POST, "/v1/secrets", Some(create)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let until = Instant::now() + Duration::from_secs(10);
    while !received.contains("\"late\"") {
        assert!(
            Instant::now() < until,
            "the stream never delivered the create: {received:?}"
        );
        if let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(1), stream.chunk())
            .await
            .unwrap_or(Ok(None))
        {
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(
        received.contains("\n\n"),
        "no blank line kept the stream open: {received:?}"
    );
    assert!(server.stop().success());
}
