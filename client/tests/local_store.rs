//! The local file alone (no server reachable): edits are saved before the call returns,
//! survive a restart, and local compaction merges a document's updates so deleted content
//! really leaves the snapshot and update tables.

mod common;

use common::*;
use replicate_client::store::Store;
use yrs::{Text, Transact};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn offline_edits_survive_a_restart_and_local_compaction_drops_deleted_content() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("a.sqlite");
    let net = Flaky::new("http://127.0.0.1:9");
    net.set_offline(true);
    let secret = "TOP-SECRET-0123456789";
    {
        let client = open(&path, &net);
        let doc = client
            .collection("c")
            .and_then(|c| c.doc("d"))
            .expect("doc");
        let text = doc.doc().get_or_insert_text("body");
        doc.edit(|txn| text.insert(txn, 0, secret)).expect("saved");
        doc.edit(|txn| text.remove_range(txn, 0, secret.len() as u32))
            .expect("saved");
        // Edits through a plain yrs transaction are saved too, at commit.
        for i in 0..60 {
            let mut txn = doc.doc().transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, &format!("{i},"));
        }
        assert!(client.sync_once().is_err(), "offline");
        assert_eq!(
            client
                .collection("c")
                .and_then(|c| c.status())
                .map(|s| s.pending)
                .ok(),
            Some(62)
        );
    } // process "dies"
    let store = Store::open(&path).expect("store");
    let threshold = options().local_compaction_threshold;
    assert!(store.update_count("c", "d").expect("count") <= threshold);
    let parts = store.load_document("c", "d").expect("parts");
    assert!(
        parts.iter().all(|p| !contains(p, secret.as_bytes())),
        "deleted text is still in the snapshot or the updates"
    );
    drop(store);
    let client = open(&path, &net);
    let expected: String = (0..60).map(|i| format!("{i},")).collect();
    assert_eq!(text(&client, "c", "d"), expected);
    assert_eq!(
        client
            .collection("c")
            .and_then(|c| c.status())
            .map(|s| s.pending)
            .ok(),
        Some(62)
    );
}
