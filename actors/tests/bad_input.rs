//! Invariant 5 at the actor boundary: invalid, empty, truncated, oversized and random bytes
//! are rejected with a typed error, and nothing is stored or counted.

mod common;

use common::*;
use proptest::prelude::*;
use replicate_actors::{CompactRequest, Error, ManualClock, Replicate, StreamRequest, Write};

async fn assert_nothing_stored(r: &Replicate) {
    let stats = r.collection_stats("c").await.unwrap();
    assert_eq!(
        (stats.assigned_seq, stats.appends, stats.documents),
        (0, 0, 0),
        "{stats:?}"
    );
    assert!(r
        .stream("c", StreamRequest::after(0))
        .await
        .unwrap()
        .changes
        .is_empty());
}

#[actix_rt::test]
async fn invalid_writes_are_rejected_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.max_update_bytes = 4096;
    let r = open_with(config, &clock).await;
    let good = Replica::new(1).append("hello");
    let big = Replica::new(2).append(&"x".repeat(5000));
    let cases: Vec<(&str, Write, &str)> = vec![
        ("empty bytes", write("d", vec![]), "invalid_yjs"),
        ("one junk byte", write("d", vec![0xff]), "invalid_yjs"),
        (
            "truncated",
            write("d", good[..good.len() - 2].to_vec()),
            "invalid_yjs",
        ),
        (
            "text, not yjs",
            write("d", b"{\"hello\":1}".to_vec()),
            "invalid_yjs",
        ),
        (
            "count bomb",
            write(
                "d",
                vec![
                    1, 1, 1, 0, 8, 1, 1, b't', 1, 118, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0,
                ],
            ),
            "invalid_yjs",
        ),
        ("over the size cap", write("d", big), "too_large"),
        ("empty document id", write("", good.clone()), "invalid_name"),
        (
            "control char in id",
            write("a\u{7}b", good.clone()),
            "invalid_name",
        ),
        (
            "long id",
            write(&"d".repeat(10_000), good.clone()),
            "invalid_name",
        ),
        (
            "bad op id",
            Write {
                op_id: Some(String::new()),
                ..write("d", good.clone())
            },
            "invalid_name",
        ),
    ];
    for (what, w, code) in cases {
        let err = r.insert("c", w).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err}");
    }
    assert!(r.insert("", write("d", good.clone())).await.is_err());
    assert_nothing_stored(&r).await;

    // Bad snapshots and state vectors change nothing either.
    let bad_snapshot = CompactRequest {
        snapshot: Some(vec![0xff, 0x01]),
        ..CompactRequest::document("d")
    };
    assert_eq!(
        r.compact("c", bad_snapshot).await.unwrap_err().code(),
        "invalid_yjs"
    );
    let bad_sv = CompactRequest {
        state_vector: Some(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        ..CompactRequest::document("d")
    };
    assert_eq!(
        r.compact("c", bad_sv).await.unwrap_err().code(),
        "invalid_yjs"
    );
    assert_eq!(
        r.recovery("c", &[5, 1], None).await.unwrap_err().code(),
        "invalid_yjs"
    );
    assert_eq!(
        r.ack("c", "p", 1).await.unwrap_err(),
        Error::AckAhead { synced: 1, head: 0 }
    );
    assert!(matches!(
        r.stream("c", StreamRequest::after(1)).await,
        Err(Error::CursorAhead { .. })
    ));
    for limit in [0, 1001, usize::MAX] {
        let req = StreamRequest {
            limit,
            ..StreamRequest::after(0)
        };
        assert_eq!(
            r.stream("c", req).await.unwrap_err().code(),
            "invalid_argument"
        );
    }
    assert_nothing_stored(&r).await;

    // The collection still works.
    assert_eq!(r.insert("c", write("d", good)).await.unwrap().seq, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes: either a valid update (stored, seq 1) or an error with nothing stored.
    #[test]
    fn random_bytes_store_nothing_unless_valid(batch in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8)) {
        actix::System::new().block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(1_000);
            let r = open(dir.path(), &clock).await;
            let mut stored = 0;
            for bytes in batch {
                match r.insert("c", write("d", bytes)).await {
                    Ok(w) => {
                        stored += 1;
                        assert_eq!(w.seq, stored);
                    }
                    Err(e) => assert!(matches!(e, Error::InvalidYjs { .. }), "{e}"),
                }
            }
            let stats = r.collection_stats("c").await.unwrap();
            assert_eq!(stats.assigned_seq, stored);
            r.close(std::time::Duration::from_secs(1)).await.unwrap();
        });
    }
}
