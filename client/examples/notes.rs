//! A small terminal notes tool on replicate-client: each note is a document of the `notes`
//! collection holding a Y.Text `body`, kept in its own SQLite file and synced with a server.
//!
//! ```text
//! cargo run -p replicate-client --example notes -- [--db FILE] [--server URL] [--token JWT] [--offline] COMMAND
//!   add TEXT…         new note; prints its id
//!   edit ID TEXT…     replaces the note's text
//!   list              one line per note: `ID: TEXT`
//!   sync              pushes and pulls; prints the status
//! ```
//!
//! Every command works offline (`--offline`, or a server that cannot be reached): the change
//! is saved in the file and goes to the server on a later `sync` (or any later command).
//! Two copies on two files converge through the server.

use std::error::Error;
use std::io::Write;

use replicate_client::Client;
use yrs::{GetString, Text, Transact};

const COLLECTION: &str = "notes";

struct Args {
    db: String,
    server: String,
    token: Option<String>,
    offline: bool,
    command: Vec<String>,
}

fn parse(args: Vec<String>) -> Result<Args, Box<dyn Error>> {
    let mut parsed = Args {
        db: "notes.sqlite".into(),
        server: std::env::var("REPLICATE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
        token: std::env::var("REPLICATE_TOKEN").ok(),
        offline: false,
        command: Vec::new(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--db" => parsed.db = it.next().ok_or("--db needs a file")?,
            "--server" => parsed.server = it.next().ok_or("--server needs a URL")?,
            "--token" => parsed.token = Some(it.next().ok_or("--token needs a token")?),
            "--offline" => parsed.offline = true,
            _ => {
                parsed.command.push(a);
                parsed.command.extend(it.by_ref());
            }
        }
    }
    Ok(parsed)
}

/// Runs one command; what it prints goes to `out`.
pub fn run(args: Vec<String>, out: &mut dyn Write) -> Result<(), Box<dyn Error>> {
    let args = parse(args)?;
    let client = Client::open(&args.db, &args.server, args.token.as_deref())?;
    let notes = client.collection(COLLECTION)?;
    let sync = |out: &mut dyn Write| -> Result<(), Box<dyn Error>> {
        if args.offline {
            return Ok(());
        }
        if let Err(e) = notes.sync_once() {
            let pending = notes.status()?.pending;
            writeln!(out, "offline ({e}); {pending} change(s) saved locally")?;
        }
        Ok(())
    };
    let words = |from: usize| args.command.get(from..).unwrap_or_default().join(" ");
    match args.command.first().map(String::as_str) {
        Some("add") => {
            let id = format!("n{:08x}", rand::random::<u32>());
            set_body(&notes.doc(&id)?, &words(1))?;
            writeln!(out, "{id}")?;
            sync(out)?;
        }
        Some("edit") => {
            let id = args.command.get(1).ok_or("edit needs a note id")?;
            if !notes.documents()?.contains(id) {
                sync(out)?; // maybe it was made elsewhere
                if !notes.documents()?.contains(id) {
                    return Err(format!("no note {id}").into());
                }
            }
            set_body(&notes.doc(id)?, &words(2))?;
            sync(out)?;
        }
        Some("list") => {
            sync(out)?;
            for id in notes.documents()? {
                let doc = notes.doc(&id)?;
                let body = doc.doc().get_or_insert_text("body");
                let txn = doc.doc().transact();
                writeln!(out, "{id}: {}", body.get_string(&txn))?;
            }
        }
        Some("sync") => {
            sync(out)?;
            let s = notes.status()?;
            writeln!(
                out,
                "{} · {} pending · synced to seq {}{}",
                if s.online { "online" } else { "offline" },
                s.pending,
                s.last_synced_seq,
                if s.rejected > 0 {
                    format!(" · {} rejected", s.rejected)
                } else {
                    String::new()
                }
            )?;
        }
        _ => return Err("usage: notes [--db FILE] [--server URL] [--token JWT] [--offline] add TEXT | edit ID TEXT | list | sync".into()),
    }
    Ok(())
}

/// Replaces the note's text in one transaction (saved when it commits).
fn set_body(doc: &replicate_client::Document, text: &str) -> Result<(), Box<dyn Error>> {
    let body = doc.doc().get_or_insert_text("body");
    doc.edit(|txn| {
        let len = body.len(txn);
        body.remove_range(txn, 0, len);
        body.insert(txn, 0, text);
    })?;
    Ok(())
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "replicate_client=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut out = std::io::stdout();
    if let Err(e) = run(std::env::args().skip(1).collect(), &mut out) {
        eprintln!("notes: {e}");
        std::process::exit(1);
    }
}
