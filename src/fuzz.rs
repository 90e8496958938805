//! Property tests over arbitrary bytes for the decoders of what sledger reads back from disk
//! or from a user (issue 13, item 12): the event codec (every type, every version number), the
//! snapshot decoder, and the import parsers. None may panic. Bounded case counts, on stable,
//! in `cargo test`.

use proptest::prelude::*;

use crate::event::{StoredEvent, EVENT_TYPES};
use crate::import::{parse_dotenv, Format, ImportFile};
use crate::Catalog;

fn event(event_type: &str, event_version: u32, payload: Vec<u8>) -> StoredEvent {
    StoredEvent {
        seq: 1,
        event_id: uuid::Uuid::nil(),
        recorded_at: 0,
        actor: "fuzz".into(),
        secret_id: Some(uuid::Uuid::nil()),
        event_type: event_type.into(),
        event_version,
        payload,
        prev_hash: [0; 32],
        hash: [0; 32],
        mac: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Every event type and version, with arbitrary payload bytes, and a valid payload of
    /// one type under every other type's name.
    #[test]
    fn event_payloads_never_panic(
        type_index in 0..EVENT_TYPES.len(),
        version in 0u32..4,
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let _ = event(EVENT_TYPES[type_index], version, payload).decode();
    }

    #[test]
    fn unknown_event_types_never_panic(name in "[a-z.]{0,20}", payload in proptest::collection::vec(any::<u8>(), 0..40)) {
        let _ = event(&name, 1, payload).decode();
    }

    /// Snapshots: arbitrary bytes, and real snapshots with bytes flipped or cut.
    #[test]
    fn snapshots_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        flip in any::<usize>(),
        cut in any::<usize>(),
    ) {
        let _ = Catalog::from_snapshot(&bytes);
        let mut real = Catalog { seq: 9, ..Default::default() }.to_snapshot();
        real.extend_from_slice(&bytes);
        if !real.is_empty() {
            let i = flip % real.len();
            real[i] ^= 0x5a;
            real.truncate(cut % (real.len() + 1));
        }
        let _ = Catalog::from_snapshot(&real);
    }

    #[test]
    fn dotenv_never_panics(text in any::<String>(), shaped in "((export )?[A-Z_]{1,4}=(\"[^\"]{0,8}\"?|'[^']{0,8}'?|[^\n]{0,8})\n?|#[^\n]{0,5}\n){0,6}") {
        let _ = parse_dotenv(&text);
        let _ = parse_dotenv(&shaped);
    }
}

proptest! {
    // Each case writes a file: fewer of them.
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// JSON and JSON-lines import files of arbitrary bytes, and of almost-valid records.
    #[test]
    fn import_files_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        shaped in r#"\[?(\{"name":"[a-z/]{0,6}","values":\{("[a-z]{0,3}":"[^"]{0,5}",?){0,2}\}(,"labels":\{\})?(,"private":(true|1))?\}[,\n]?){0,3}\]?"#,
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (i, content) in [bytes, shaped.into_bytes()].into_iter().enumerate() {
            let path = dir.path().join(format!("input-{i}"));
            std::fs::write(&path, content).unwrap();
            for format in [Format::Json, Format::Jsonl] {
                let file = ImportFile::new(&path, format, None).unwrap();
                let _ = crate::import::check_file(&file, 1024);
                let _ = file.scan(&mut |_| Ok(true));
            }
        }
    }
}
