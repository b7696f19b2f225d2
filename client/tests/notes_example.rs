//! Drives the `notes` example: two copies on their own files converge through the server,
//! also after editing offline and with the server down.

mod common;

#[path = "../examples/notes.rs"]
#[allow(dead_code)] // its `main` is the example's, not ours
mod notes;

use std::path::Path;

use common::Server;

fn notes(db: &Path, server: &str, args: &[&str]) -> String {
    let mut all = vec![
        "--db".to_string(),
        db.display().to_string(),
        "--server".into(),
        server.into(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    let mut out = Vec::new();
    notes::run(all, &mut out).unwrap_or_else(|e| panic!("notes {args:?}: {e}"));
    String::from_utf8(out).expect("utf-8")
}

fn list(db: &Path, server: &str, offline: bool) -> Vec<String> {
    let args: &[&str] = if offline {
        &["--offline", "list"]
    } else {
        &["list"]
    };
    notes(db, server, args)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn two_copies_converge_also_after_offline_edits() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(&dir.path().join("data"));
    let url = server.url();
    let (a, b) = (dir.path().join("a.sqlite"), dir.path().join("b.sqlite"));

    let id = notes(&a, &url, &["add", "buy", "milk"]).trim().to_string();
    assert!(id.starts_with('n'), "{id}");
    assert_eq!(list(&b, &url, false), vec![format!("{id}: buy milk")]);

    // Both offline: A edits the shared note, B adds one.
    notes(&a, &url, &["--offline", "edit", &id, "buy oat milk"]);
    let id2 = notes(&b, &url, &["--offline", "add", "call", "mum"])
        .lines()
        .next()
        .expect("id")
        .to_string();
    assert_eq!(list(&a, &url, true), vec![format!("{id}: buy oat milk")]);
    assert_eq!(list(&b, &url, true).len(), 2);

    // The server goes down: commands still work and say so.
    server.kill();
    let out = notes(&a, &url, &["sync"]);
    assert!(out.contains("offline"), "{out}");
    assert!(out.contains("1 pending"), "{out}");

    server.restart();
    notes(&a, &url, &["sync"]);
    notes(&b, &url, &["sync"]);
    notes(&a, &url, &["sync"]);
    let (la, lb) = (list(&a, &url, false), list(&b, &url, false));
    assert_eq!(la, lb, "the copies converge");
    assert_eq!(la, {
        let mut v = vec![format!("{id}: buy oat milk"), format!("{id2}: call mum")];
        v.sort();
        v
    });
    let status = notes(&b, &url, &["sync"]);
    assert!(status.starts_with("online · 0 pending"), "{status}");
}
