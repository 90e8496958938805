//! The security hardening findings, each reproduced through the CLI a user runs.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::Env;

/// A plug-in that dumps its environment sees neither the master key nor any cloud credential:
/// only PATH, HOME, LANG and what its URL names.
#[test]
fn exec_plugins_get_a_cleared_environment() {
    let env = Env::new();
    let plugin = env.path("plugin.sh");
    let dump = env.path("plugin-env.txt");
    std::fs::write(
        &plugin,
        "#!/bin/sh\nenv > \"$1\"\nwhile IFS= read -r line; do echo '{\"ok\":true,\"entries\":[]}'; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let url = format!("exec://{}?arg={}&env=PLUGIN_SETTING", plugin.display(), dump.display());
    env.ok(&["sink", "add", "dump", &url, "--role", "replica"]);
    env.ok(&["secret", "create", "db", "--value", "pw=not-for-plugins"]);
    let master = std::fs::read_to_string(&env.key).unwrap();
    let vars = [
        ("SLEDGER_MASTER_KEY", master.trim()),
        ("VAULT_TOKEN", "vault-token-for-sledger-only"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-for-sledger-only"),
        ("AZURE_CLIENT_SECRET", "azure-secret-for-sledger-only"),
        ("PLUGIN_SETTING", "given-by-name"),
    ];
    common::ok_with(&env, &vars, &["project", "--sink", "dump"]);
    let seen = std::fs::read_to_string(&dump).expect("the plug-in ran");
    assert!(seen.contains("PLUGIN_SETTING=given-by-name"), "{seen}");
    assert!(seen.contains("PATH="), "{seen}");
    for (name, value) in &vars[..4] {
        assert!(!seen.contains(name), "the plug-in saw {name}:\n{seen}");
        assert!(!seen.contains(value), "the plug-in saw the value of {name}");
    }
    // Naming the master key does not pass it either: such a URL is refused.
    let refused = env.fails(
        &["sink", "add", "leak", &format!("exec://{}?env=SLEDGER_MASTER_KEY", plugin.display())],
        2,
    );
    assert!(refused.contains("never passed"), "{refused}");
}
