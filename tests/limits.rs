//! A secret that some attached sink could not store is refused before it is appended, with an
//! error naming the sink and the limit; without that sink the same secret is accepted.

mod common;

use common::Env;

fn head(env: &Env) -> u64 {
    env.json(&["verify"])["events"].as_u64().unwrap()
}

/// 20 labels of 120 characters: 2 400+ bytes of metadata, over the 1 921 that GCP's 61 label
/// values of 63 characters can carry (hex-encoded).
fn many_labels() -> Vec<String> {
    (0..20)
        .flat_map(|i| ["--label".to_owned(), format!("label{i:02}={}", "x".repeat(120))])
        .collect()
}

#[test]
fn labels_over_a_gcp_sinks_budget_are_refused_before_the_append() {
    let env = Env::new();
    let labels = many_labels();
    let mut create: Vec<&str> = vec!["secret", "create", "big/labels", "--value", "k=v"];
    create.extend(labels.iter().map(String::as_str));

    env.ok(&["sink", "add", "g", "gcp-sm://proj?endpoint=http://127.0.0.1:9"]);
    let before = head(&env);
    let err = env.fails(&create, 2);
    assert!(err.contains("\"g\""), "{err}");
    assert!(err.contains("1921"), "the error names the limit: {err}");
    assert_eq!(head(&env), before, "nothing was appended");

    // An update that would push a fitting secret over the budget is refused too.
    env.ok(&["secret", "create", "small", "--value", "k=v"]);
    let mut update: Vec<&str> = vec!["secret", "update", "small"];
    update.extend(labels.iter().map(String::as_str));
    let before = head(&env);
    env.fails(&update, 2);
    assert_eq!(head(&env), before);

    env.ok(&["sink", "remove", "g"]);
    let before = head(&env);
    env.ok(&create);
    assert_eq!(head(&env), before + 1);
}

#[test]
fn a_value_over_azures_limit_is_refused_before_the_append() {
    let env = Env::new();
    let big = format!("k={}", "v".repeat(26_000));
    let create = ["secret", "create", "big/value", "--value", big.as_str()];

    env.ok(&["sink", "add", "kv", "azure-kv://127.0.0.1:9"]);
    let before = head(&env);
    let err = env.fails(&create, 2);
    assert!(err.contains("\"kv\"") && err.contains("25600"), "{err}");
    assert_eq!(head(&env), before);

    env.ok(&["sink", "remove", "kv"]);
    let before = head(&env);
    env.ok(&create);
    assert_eq!(head(&env), before + 1);
}
