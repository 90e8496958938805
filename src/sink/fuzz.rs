//! Property tests over arbitrary input for everything a sink decodes from a backend it does
//! not control (issue 13, item 12): none may panic, whatever a backend, a plug-in or an
//! attacker with write access to it stores. Bounded case counts, on stable, in `cargo test`.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use zeroize::Zeroizing;

use super::tagged::TagLimits;
use super::*;

/// Arbitrary text, including JSON-looking text, most of the time near a valid shape.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[{}\\[\\]\":,a-z0-9 .-]{0,80}",
        Just(r#"{"id":"00000000-0000-7000-8000-000000000000","name":"n","scope":"workspace","owner":"o","labels":{},"seq":1,"version":1}"#.to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The exec plug-in's reply line.
    #[test]
    fn exec_replies_never_panic(line in text()) {
        let _ = exec::parse_reply(std::path::Path::new("/plugin"), &line);
    }

    /// A value a backend holds (AWS, GCP, Azure: a JSON object of strings), and one being
    /// adopted (any text).
    #[test]
    fn stored_values_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), text in text()) {
        let meta: Option<RecordMeta> = serde_json::from_str(&text).ok();
        if let Some(meta) = meta {
            let _ = SinkRecord::from_stored("fuzz", "object", meta, 1, &bytes);
        }
        let _ = crate::crypto::SecretValues::from_json(&bytes);
        let _ = foreign::values_from_text(&text);
    }

    /// GCP labels and Azure tags: seq, state and hex-chunked metadata JSON.
    #[test]
    fn tags_and_labels_never_panic(
        fields in proptest::collection::hash_map("sledger-(seq|state|m0[0-9])|[a-z]{1,5}", text(), 0..8),
        chunks in 0usize..70,
    ) {
        let limits = TagLimits { kind: "fuzz", chunks, chunk_len: 63 };
        let _ = limits.decode(&fields);
    }

    /// AWS keeps its metadata in the secret's Description.
    #[cfg(feature = "aws")]
    #[test]
    fn aws_descriptions_never_panic(description in proptest::option::of(text())) {
        let _ = aws::AwsSink::described(description.as_deref());
    }

    /// Vault keeps its metadata in a KV entry's custom metadata.
    #[cfg(feature = "vault")]
    #[test]
    fn vault_metadata_never_panics(
        custom in proptest::collection::hash_map("name|scope|owner|labels|version|seq|[a-z]{1,4}", text(), 0..7),
        data in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4),
    ) {
        let custom: HashMap<String, String> = custom;
        let data: BTreeMap<String, Zeroizing<String>> =
            data.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect();
        let _ = vault::record_from("kv/x", crate::SecretId::nil(), 1, &custom, &data);
    }

    /// The sink URL parser, on any text and on text after every scheme.
    #[test]
    fn sink_urls_never_panic(
        scheme in "(sqlite|exec|vault|aws-sm|gcp-sm|azure-kv|memory|http|)",
        rest in any::<String>(),
        query in "[a-z_]{0,12}=?[^&#]{0,20}(&[a-z_]{0,12}=[^&#]{0,20}){0,3}",
    ) {
        let _ = SinkUrl::parse(&rest);
        let _ = SinkUrl::parse(&format!("{scheme}://{rest}"));
        let _ = SinkUrl::parse(&format!("{scheme}:///tmp/x?{query}"));
        let _ = SinkUrl::parse(&format!("{scheme}://host:8200/{rest}?{query}"));
    }
}
