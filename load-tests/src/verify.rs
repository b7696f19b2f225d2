//! The correctness verdict: seqs contiguous, every peer converged to the same state, nothing
//! lost. Checks run after the timed part of a scenario, so they never distort its numbers.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

use crate::backend::Backend;
use crate::peer::{empty_state_vector, Peer, Replica};

/// One answered write: its seq, document, unique edit key, when its push started and when
/// its answer came.
#[derive(Debug, Clone)]
pub struct Written {
    pub seq: u64,
    pub doc: String,
    pub key: String,
    pub started: Instant,
    pub answered: Instant,
}

/// Every answered write of a scenario, shared by its writers.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Rc<RefCell<Vec<Written>>>);

impl Ledger {
    pub fn record(&self, seq: u64, doc: &str, key: &str, started: Instant) {
        self.0.borrow_mut().push(Written {
            seq,
            doc: doc.to_string(),
            key: key.to_string(),
            started,
            answered: Instant::now(),
        });
    }

    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    pub fn writes(&self) -> Vec<Written> {
        self.0.borrow().clone()
    }

    /// Highest seq answered.
    pub fn head(&self) -> u64 {
        self.0.borrow().iter().map(|w| w.seq).max().unwrap_or(0)
    }

    /// Push start time by seq.
    pub fn started_by_seq(&self) -> HashMap<u64, Instant> {
        self.0.borrow().iter().map(|w| (w.seq, w.started)).collect()
    }

    /// Every answered write by its edit key (for feeds that carry keys, not seqs).
    pub fn by_key(&self) -> HashMap<String, Written> {
        let writes = self.0.borrow();
        writes.iter().map(|w| (w.key.clone(), w.clone())).collect()
    }

    /// The edit keys of the answered writes, per document.
    pub fn keys_by_doc(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for w in self.0.borrow().iter() {
            out.entry(w.doc.clone()).or_default().push(w.key.clone());
        }
        out
    }
}

/// One named check and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A scenario's checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            ok,
            detail: detail.into(),
        });
    }

    /// A check that holds if `result` is `Ok` (detail `ok_detail`), or fails with its error.
    pub fn result(&mut self, name: &str, result: &anyhow::Result<()>, ok_detail: String) {
        let detail = match result {
            Ok(()) => ok_detail,
            Err(e) => format!("{e:#}"),
        };
        self.check(name, result.is_ok(), detail);
    }

    /// The checks every scenario ends with (see [`standard`]).
    pub async fn standard(
        &mut self,
        backend: &Backend,
        collection: &str,
        peers: &[&Peer],
        ledger: &Ledger,
        label: &str,
    ) {
        self.checks
            .extend(standard(backend, collection, peers, ledger, label).await);
    }

    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    pub fn merge(&mut self, other: Verdict) {
        self.checks.extend(other.checks);
    }
}

/// The writers' seqs are exactly `base+1 ..= base+n`: no gap, none issued twice.
pub fn seqs_contiguous(ledger: &Ledger, base: u64, label: &str) -> Check {
    let mut seqs: Vec<u64> = ledger.writes().iter().map(|w| w.seq).collect();
    seqs.sort_unstable();
    let n = seqs.len() as u64;
    let dupes = seqs.windows(2).filter(|w| w[0] == w[1]).count();
    let ok = dupes == 0
        && seqs.first().is_none_or(|f| *f == base + 1)
        && seqs.last().is_none_or(|l| *l == base + n);
    Check {
        name: format!("seqs contiguous ({label})"),
        ok: ok && n > 0,
        detail: format!(
            "{n} writes answered seqs {}..={}, {dupes} duplicates",
            seqs.first().unwrap_or(&0),
            seqs.last().unwrap_or(&0)
        ),
    }
}

/// A reader saw every seq between where it started and its cursor: as a delta, inside a
/// snapshot of that seq's document, or inside a recovery diff — and deltas in increasing order.
pub fn reader_covered(peer: &Peer, ledger: &Ledger) -> Result<(), String> {
    if peer.seen.order_violations > 0 {
        return Err(format!(
            "{}: {} deltas out of order",
            peer.name, peer.seen.order_violations
        ));
    }
    let docs: HashMap<u64, String> = ledger
        .writes()
        .into_iter()
        .map(|w| (w.seq, w.doc))
        .collect();
    let deltas: HashSet<u64> = peer.seen.deltas.iter().copied().collect();
    let mut snapshot_through: HashMap<&str, u64> = HashMap::new();
    for (doc, seq) in &peer.seen.snapshots {
        let e = snapshot_through.entry(doc.as_str()).or_default();
        *e = (*e).max(*seq);
    }
    let from = peer.seen.start_cursor.max(peer.seen.recovered_through);
    for seq in from + 1..=peer.cursor {
        if deltas.contains(&seq) {
            continue;
        }
        let covered = docs
            .get(&seq)
            .is_some_and(|d| snapshot_through.get(d.as_str()).is_some_and(|s| *s >= seq));
        if !covered {
            return Err(format!(
                "{}: seq {seq} neither delivered nor inside a snapshot (cursor {})",
                peer.name, peer.cursor
            ));
        }
    }
    Ok(())
}

/// Every reader is covered (see [`reader_covered`]).
pub fn readers_covered(peers: &[&Peer], ledger: &Ledger) -> Check {
    let failures: Vec<String> = peers
        .iter()
        .filter_map(|p| reader_covered(p, ledger).err())
        .collect();
    let deltas: usize = peers.iter().map(|p| p.seen.deltas.len()).sum();
    let snapshots: usize = peers.iter().map(|p| p.seen.snapshots.len()).sum();
    Check {
        name: "nothing skipped (per reader, per seq)".into(),
        ok: failures.is_empty(),
        detail: if failures.is_empty() {
            format!(
                "{} readers: {deltas} deltas, {snapshots} snapshots, in order",
                peers.len()
            )
        } else {
            format!("{} readers failed; first: {}", failures.len(), failures[0])
        },
    }
}

/// The server's whole state of `doc`, retrying transient client errors (a verdict must not
/// fail because a connection did).
async fn server_state(
    backend: &Backend,
    collection: &str,
    doc: &str,
) -> anyhow::Result<crate::backend::StateAt> {
    let mut last = None;
    for attempt in 0..5u32 {
        match backend
            .recovery(collection, &empty_state_vector(), Some(doc))
            .await
        {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
    }
    Err(last.expect("five attempts"))
}

/// Every peer holds the same content as the server for every document written, and every
/// answered write's edit is in it.
pub async fn converged(
    backend: &Backend,
    collection: &str,
    peers: &[&Peer],
    ledger: &Ledger,
) -> Vec<Check> {
    let mut by_doc: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for w in ledger.writes() {
        by_doc.entry(w.doc).or_default().push(w.key);
    }
    let mut diverged = Vec::new();
    let mut lost = Vec::new();
    let mut server_errors = Vec::new();
    let mut pending = 0;
    let mut checked = 0;
    for (doc, keys) in &by_doc {
        let server = match server_state(backend, collection, doc).await {
            Ok(s) => s,
            Err(e) => {
                server_errors.push(format!("{doc}: {e:#}"));
                continue;
            }
        };
        let reference = match Replica::from_update(&server.update) {
            Ok(r) => r,
            Err(e) => {
                server_errors.push(format!("{doc}: server state does not apply: {e:#}"));
                continue;
            }
        };
        if reference.has_pending() {
            pending += 1;
        }
        // A steady writer's older blocks were replaced by its own later writes.
        let present = crate::peer::present_keys(keys);
        checked += present.len();
        let missing = present.iter().filter(|k| !reference.has_key(k)).count();
        if missing > 0 {
            lost.push(format!(
                "{doc}: {missing} of {} edits missing on the server",
                present.len()
            ));
        }
        let want = reference.digest();
        for p in peers {
            match p.replica(doc) {
                Some(r) if r.digest() == want => {}
                Some(r) => diverged.push(format!(
                    "{} differs on {doc} ({} vs {} keys)",
                    p.name,
                    r.key_count(),
                    reference.key_count()
                )),
                None => diverged.push(format!("{} lacks {doc}", p.name)),
            }
        }
    }
    let writes = ledger.len();
    vec![
        Check {
            name: "converged (every peer = server, per document)".into(),
            ok: diverged.is_empty() && server_errors.is_empty() && pending == 0,
            detail: if diverged.is_empty() && server_errors.is_empty() && pending == 0 {
                format!(
                    "{} peers × {} documents identical",
                    peers.len(),
                    by_doc.len()
                )
            } else {
                format!(
                    "{} divergences, {} server errors, {pending} documents with pending structs; first: {}",
                    diverged.len(),
                    server_errors.len(),
                    diverged.first().or(server_errors.first()).cloned().unwrap_or_default()
                )
            },
        },
        Check {
            name: "nothing lost (every answered edit present)".into(),
            ok: lost.is_empty() && writes > 0,
            detail: if lost.is_empty() && checked == writes {
                format!("{writes} edits present")
            } else if lost.is_empty() {
                format!(
                    "{checked} edits present ({} of the {writes} written were in blocks their \
                     writers replaced since: steady documents)",
                    writes - checked
                )
            } else {
                lost.join("; ")
            },
        },
    ]
}

/// What every scenario checks at the end: the writers' seqs are contiguous from 1 (`label`
/// names the writers), no reader skipped a seq, every reader holds what the server holds and
/// every answered edit is there.
pub async fn standard(
    backend: &Backend,
    collection: &str,
    peers: &[&Peer],
    ledger: &Ledger,
    label: &str,
) -> Vec<Check> {
    let mut checks = vec![
        seqs_contiguous(ledger, 0, label),
        readers_covered(peers, ledger),
    ];
    checks.extend(converged(backend, collection, peers, ledger).await);
    checks
}

/// Every one of `peers` reached `head` (`who`: "subscriber", "peer") and nothing in `errors`
/// (catch-ups that failed) went wrong.
pub fn reached_head(who: &str, peers: &[&Peer], head: u64, errors: &[String]) -> Check {
    let behind = peers.iter().filter(|p| p.cursor < head).count();
    Check {
        name: format!("every {who} reached the head"),
        ok: behind == 0 && errors.is_empty(),
        detail: errors
            .first()
            .cloned()
            .unwrap_or_else(|| format!("{behind} of {} behind head {head}", peers.len())),
    }
}

/// Folds several checks of the same kind (e.g. one per collection) into one.
pub fn combine(name: &str, checks: Vec<Check>) -> Check {
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    Check {
        name: name.to_string(),
        ok: !checks.is_empty() && failed.is_empty(),
        detail: match failed.first() {
            Some(f) => format!(
                "{} of {} failed; first: {}",
                failed.len(),
                checks.len(),
                f.detail
            ),
            None => format!(
                "{} of {} ok; e.g. {}",
                checks.len(),
                checks.len(),
                checks.first().map_or("", |c| c.detail.as_str())
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn checks_fail_when_they_should() {
        let mut p = Peer::new(1, "c", Backend::Offline, Metrics::new(), 1);
        p.start_at(5);
        assert!(reached_head("peer", &[&p], 5, &[]).ok);
        assert!(!reached_head("peer", &[&p], 6, &[]).ok);
        assert!(!reached_head("peer", &[&p], 5, &["lost".into()]).ok);
        let mut v = Verdict::default();
        v.result("ok", &Ok(()), "fine".into());
        assert!(v.ok());
        v.result("err", &Err(anyhow::anyhow!("boom")), "fine".into());
        assert!(!v.ok());
        assert_eq!(v.checks[1].detail, "boom");
        // A seq answered twice or skipped is not contiguous.
        let ledger = Ledger::default();
        for seq in [1, 2, 4] {
            ledger.record(seq, "d", "k", Instant::now());
        }
        assert!(!seqs_contiguous(&ledger, 0, "w").ok);
    }
}
