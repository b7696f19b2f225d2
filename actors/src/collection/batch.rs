//! Write batches ([`AppendBatch`], `POST /v1/{c}/batch`): many writes in one message, each
//! checked on its own, the accepted ones committed in one round with consecutive seqs in
//! request order.
//!
//! # How
//! The batch's writes are split by document into parts (request order kept within a part),
//! and each part joins its document's check queue like a write of its own, but is checked
//! alone. Once checked, a part *holds* its document: that queue does not move on until the
//! whole batch is numbered. Then, in one turn of the actor (so no other write can take a seq
//! in between), the accepted writes are numbered in request order and submitted as one
//! [`Batch`]: one atomic commit. Only then do the held queues move on.
//!
//! # Why hold the documents
//! A part's accepted writes are in the document's checked state but have no seq yet. Were
//! the queue to move on, a later write checked against that state could be numbered before
//! them (a stored update would then depend on a higher seq), and a rebuild from the store
//! would lack them. Holding costs other writers of those documents the time the batch's
//! other parts take to check.
//!
//! # Invariants
//! - Every part of a batch is queued in one turn, so in every document's queue batches stand
//!   in arrival order: a batch waits only for earlier ones, never in a cycle.
//! - A write that poisons its part's state (a refusal after yrs changed it) is answered its
//!   refusal; the part's accepted writes and the ones after it are checked again, as a part
//!   of their own at the head of the queue, against a rebuild from the store (which lacks
//!   them until the batch commits). Each round answers at least the poisoning write, so it
//!   ends.
//! - A write repeating an earlier write's op id, document and bytes of the same batch answers
//!   as a duplicate of it (its seq, or its refusal) and is never checked or stored. With other
//!   bytes it is a conflict (on a shared engine the commit says so, as it knows what other
//!   nodes stored).

use std::collections::HashMap;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{hash_bytes, Checked, CollectionActor, Queued};
use crate::error::{Error, Result};
use crate::store::{Batch, Outcome};
use crate::types::{OperationType, Write, Written};

/// Store several writes of one collection (the handle checked names and sizes): each is
/// checked on its own, and the accepted ones get consecutive seqs in the order given, in one
/// commit. Answers one result per write, in order; `Err` for the whole message only when the
/// commit failed (nothing of it was stored).
#[derive(Message)]
#[rtype(result = "Result<Vec<Result<Written>>>")]
pub struct AppendBatch {
    pub writes: Vec<(OperationType, Write)>,
}

/// One write of a batch, as it goes from check to answer.
enum Slot {
    /// In its part's check.
    Checking(OperationType, Write, u64),
    /// Accepted by its check; numbered once every part is checked.
    Accepted(OperationType, Write, u64),
    /// In the commit: sled gave it `seq`.
    Numbered(u64),
    /// In the commit: the shared engine numbers it (document, length, hash, op id).
    Submitted(String, u64, u64, Option<String>),
    /// Answered without storing anything: a duplicate of a committed write, or refused.
    Done(Result<Written>),
    /// Repeats the write at this index (same document, op id and bytes).
    Repeats(usize),
}

/// A batch whose parts are being checked.
pub(in crate::collection) struct PendingBatch {
    slots: Vec<Slot>,
    /// Parts not checked yet.
    unchecked: usize,
    /// Documents whose queues wait for this batch (its checked parts).
    held: Vec<String>,
    answer: oneshot::Sender<Result<Vec<Result<Written>>>>,
}

/// One document's writes of a batch: their indices in the batch and their bytes.
pub(in crate::collection) struct Part {
    batch: u64,
    writes: Vec<(usize, Vec<u8>)>,
    /// Checked again against a rebuild after the cached document refused some of its writes
    /// on a shared engine (see [`CollectionActor::finish_part_check`]).
    rechecked: bool,
}

impl Handler<AppendBatch> for CollectionActor {
    type Result = ResponseFuture<Result<Vec<Result<Written>>>>;

    fn handle(&mut self, msg: AppendBatch, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.touch() {
            return Box::pin(async move { Err(e) });
        }
        let id = self.next_batch;
        self.next_batch += 1;
        let (slots, parts) = self.split_batch(id, msg.writes);
        let (tx, rx) = oneshot::channel();
        self.batches.insert(
            id,
            PendingBatch {
                slots,
                unchecked: parts.len(),
                held: Vec::new(),
                answer: tx,
            },
        );
        if parts.is_empty() {
            self.number_batch(id, ctx);
        }
        for (doc, part) in parts {
            self.enqueue_check(doc, Queued::Part(part), ctx);
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::Internal("write batch was dropped".into())))
        })
    }
}

impl CollectionActor {
    /// The batch's slots, answering repeats and known op ids now, and its parts by document
    /// in order of first appearance.
    fn split_batch(
        &mut self,
        id: u64,
        writes: Vec<(OperationType, Write)>,
    ) -> (Vec<Slot>, Vec<(String, Part)>) {
        let mut slots = Vec::with_capacity(writes.len());
        let mut parts: Vec<(String, Part)> = Vec::new();
        let mut part_of: HashMap<String, usize> = HashMap::new();
        let mut first_use: HashMap<(String, String), (usize, u64)> = HashMap::new();
        for (index, (operation, write)) in writes.into_iter().enumerate() {
            let hash = hash_bytes(&write.bytes);
            // What came before this batch first: an op id's first use may be stored already.
            match self.known_op(&write, hash) {
                Ok(Some(seq)) => {
                    self.stats.duplicate_writes += 1;
                    if self.numbering {
                        self.head_moved(seq);
                    }
                    slots.push(Slot::Done(Ok(Written {
                        seq,
                        duplicate: true,
                    })));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    slots.push(Slot::Done(Err(e)));
                    continue;
                }
            }
            if let Some(op) = &write.op_id {
                let key = (write.document_id.clone(), op.clone());
                match first_use.get(&key) {
                    Some(&(first, h)) if h == hash => {
                        slots.push(Slot::Repeats(first));
                        continue;
                    }
                    // On a shared engine the op id may have been stored (by any node) with
                    // these bytes: the commit settles it against the first use.
                    Some(_) if !self.numbering => {
                        slots.push(Slot::Done(Err(Error::Conflict(format!(
                            "opId {op:?} is used for other bytes of document {:?} earlier in \
                             this batch; use a new opId for a new write",
                            write.document_id
                        )))));
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        first_use.insert(key, (index, hash));
                    }
                }
            }
            let doc = write.document_id.clone();
            let at = *part_of.entry(doc.clone()).or_insert_with(|| {
                parts.push((
                    doc,
                    Part {
                        batch: id,
                        writes: Vec::new(),
                        rechecked: false,
                    },
                ));
                parts.len() - 1
            });
            parts[at].1.writes.push((index, write.bytes.clone()));
            slots.push(Slot::Checking(operation, write, hash));
        }
        (slots, parts)
    }

    /// Checks a batch's part of `doc` on a worker thread; the document stays held after.
    pub(super) fn start_part_check(&mut self, doc: String, part: Part, ctx: &mut Context<Self>) {
        let Part {
            batch,
            writes,
            rechecked,
        } = part;
        let (indices, bytes): (Vec<usize>, Vec<Vec<u8>>) = writes.into_iter().unzip();
        let ops = indices
            .iter()
            .map(|&i| match self.batches.get(&batch).map(|b| &b.slots[i]) {
                Some(Slot::Checking(_, write, hash)) => write.op_id.clone().map(|op| (op, *hash)),
                _ => None,
            })
            .collect();
        let work = self.check_job(&doc, bytes, ops);
        ctx.spawn(work.into_actor(self).map(move |checked, act, ctx| {
            act.finish_part_check(doc, batch, indices, checked, rechecked, ctx);
        }));
    }

    fn finish_part_check(
        &mut self,
        doc: String,
        id: u64,
        indices: Vec<usize>,
        checked: Result<Checked>,
        rechecked: bool,
        ctx: &mut Context<Self>,
    ) {
        let (outcomes, stored): (Vec<Option<Result<()>>>, Vec<Option<u64>>) = match checked {
            Ok(checked) => {
                // As for single writes (see `finish_check`): on a shared engine a refusal by
                // the cached document is not trusted; the whole part goes again, once,
                // against a rebuild from the store.
                let refused = checked.outcomes.iter().enumerate().any(|(k, o)| {
                    matches!(o, Some(Err(_))) && checked.stored.get(k).copied().flatten().is_none()
                });
                if self.numbering
                    && checked.from_cache
                    && refused
                    && !rechecked
                    && self.may_recheck(&doc)
                {
                    self.shared.docs.forget(&self.name, &doc);
                    let writes = indices
                        .iter()
                        .filter_map(|&i| match self.batches.get(&id).map(|b| &b.slots[i]) {
                            Some(Slot::Checking(_, write, _)) => Some((i, write.bytes.clone())),
                            _ => None,
                        })
                        .collect();
                    let part = Part {
                        batch: id,
                        writes,
                        rechecked: true,
                    };
                    self.checking
                        .entry(doc.clone())
                        .or_default()
                        .push_front(Queued::Part(part));
                    return self.next_check(doc, ctx);
                }
                if let Some(state) = checked.state {
                    self.shared.docs.put(&self.name, &doc, state);
                }
                self.quarantine(&doc, &checked.quarantined);
                (checked.outcomes, checked.stored)
            }
            Err(e) => (
                indices.iter().map(|_| Some(Err(e.clone()))).collect(),
                Vec::new(),
            ),
        };
        for seq in stored.iter().flatten() {
            self.head_moved(*seq);
        }
        let Some(batch) = self.batches.get_mut(&id) else {
            // Cannot happen: a batch leaves only once every part is checked.
            return self.next_check(doc, ctx);
        };
        // A refusal spoiled the checked state (no outcome for the writes after it): the
        // accepted writes go again with the unanswered ones, against a rebuild (the state is
        // not cached, so the next check settles and rebuilds), ahead of anything waiting.
        let poisoned = outcomes.iter().any(Option::is_none);
        let mut again = Vec::new();
        for (k, (index, outcome)) in indices.into_iter().zip(outcomes).enumerate() {
            if let (Some(Err(_)), Some(&Some(seq))) = (&outcome, stored.get(k)) {
                // A retry of a write the store holds (see `check_job`).
                self.stats.duplicate_writes += 1;
                batch.slots[index] = Slot::Done(Ok(Written {
                    seq,
                    duplicate: true,
                }));
                continue;
            }
            match outcome {
                Some(Ok(())) if !poisoned => {
                    let slot =
                        std::mem::replace(&mut batch.slots[index], Slot::Done(Err(unchecked())));
                    batch.slots[index] = match slot {
                        Slot::Checking(operation, write, hash) => {
                            Slot::Accepted(operation, write, hash)
                        }
                        other => other,
                    };
                }
                Some(Err(e)) => {
                    self.stats.rejected_writes += 1;
                    batch.slots[index] = Slot::Done(Err(e));
                }
                Some(Ok(())) | None => {
                    if let Slot::Checking(_, write, _) = &batch.slots[index] {
                        again.push((index, write.bytes.clone()));
                    }
                }
            }
        }
        if poisoned {
            let part = Part {
                batch: id,
                writes: again,
                rechecked,
            };
            self.checking
                .entry(doc.clone())
                .or_default()
                .push_front(Queued::Part(part));
            return self.next_check(doc, ctx);
        }
        batch.held.push(doc);
        batch.unchecked -= 1;
        if batch.unchecked == 0 {
            self.number_batch(id, ctx);
        }
    }

    /// Every part is checked: numbers the accepted writes in request order, submits them as
    /// one commit, lets the held documents' queues move on, and answers once committed.
    fn number_batch(&mut self, id: u64, ctx: &mut Context<Self>) {
        let Some(PendingBatch {
            mut slots,
            held,
            answer,
            ..
        }) = self.batches.remove(&id)
        else {
            return;
        };
        let mut prepared = Batch::default();
        for slot in &mut slots {
            if !matches!(slot, Slot::Accepted(..)) {
                continue;
            }
            if let Slot::Accepted(operation, write, hash) =
                std::mem::replace(slot, Slot::Done(Err(unchecked())))
            {
                *slot = self.number_one(operation, write, hash, &mut prepared, ctx);
            }
        }
        let round = (!prepared.is_empty()).then(|| self.shared.commit.submit_outcomes(prepared));
        for doc in held.iter().cloned() {
            self.next_check(doc, ctx);
        }
        let work = async move {
            match round {
                Some(round) => round.await,
                None => Ok(Vec::new()),
            }
        };
        ctx.spawn(work.into_actor(self).map(move |res, act, ctx| {
            let answers = act.settle_batch(slots, res, &held, ctx);
            let mut durable = act.state.subscribe();
            let last_duplicate = answers
                .iter()
                .flat_map(|a| a.iter().flatten())
                .filter(|w| w.duplicate)
                .map(|w| w.seq)
                .max()
                .unwrap_or(0);
            // A duplicate is answered once the write it repeats is on disk.
            ctx.spawn(
                async move {
                    let waited = durable.wait_for(|d| *d >= last_duplicate).await;
                    let _ = answer.send(match waited {
                        Ok(_) => answers,
                        Err(_) => Err(Error::Relocated),
                    });
                }
                .into_actor(act),
            );
        }));
    }

    /// Numbers one accepted write into `prepared`, answering its new slot.
    fn number_one(
        &mut self,
        operation: OperationType,
        write: Write,
        hash: u64,
        prepared: &mut Batch,
        ctx: &mut Context<Self>,
    ) -> Slot {
        if self.numbering {
            let (append, doc, len, op_id) = self.numbered_append(operation, write, hash);
            prepared.extend(append);
            self.stats.pending_writes += 1;
            return Slot::Submitted(doc, len, hash, op_id);
        }
        // A write with the same op id may have been numbered while this one was checked.
        match self.known_op(&write, hash) {
            Ok(Some(seq)) => {
                self.stats.duplicate_writes += 1;
                return Slot::Done(Ok(Written {
                    seq,
                    duplicate: true,
                }));
            }
            Ok(None) => {}
            Err(e) => return Slot::Done(Err(e)),
        }
        match self.append(operation, write, hash, ctx) {
            Ok((seq, append)) => {
                prepared.extend(append);
                Slot::Numbered(seq)
            }
            Err(e) => Slot::Done(Err(e)),
        }
    }

    /// The answers of a batch whose commit answered `res` (one outcome per write in it).
    fn settle_batch(
        &mut self,
        slots: Vec<Slot>,
        res: Result<Vec<Outcome>>,
        held: &[String],
        ctx: &mut Context<Self>,
    ) -> Result<Vec<Result<Written>>> {
        let numbered: Vec<u64> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Numbered(seq) => Some(*seq),
                _ => None,
            })
            .collect();
        let submitted = slots
            .iter()
            .filter(|s| matches!(s, Slot::Submitted(..)))
            .count();
        self.stats.pending_writes -= (numbered.len() + submitted) as u64;
        if let (Some(&first), Some(&last)) = (numbered.first(), numbered.last()) {
            // Numbered in one turn, so consecutive. The store answers for their op ids from
            // now on (or failed for good).
            self.state.committed(first, last, res.is_ok());
        }
        let mut outcomes = match res {
            Ok(outcomes) => outcomes.into_iter(),
            Err(e) => {
                // The checked states hold writes the store lacks.
                for doc in held {
                    self.shared.docs.forget(&self.name, doc);
                }
                return Err(e);
            }
        };
        let mut answers: Vec<Result<Written>> = Vec::with_capacity(slots.len());
        for slot in slots {
            let answer = match slot {
                Slot::Numbered(seq) => Ok(Written {
                    seq,
                    duplicate: false,
                }),
                Slot::Submitted(doc, len, hash, op_id) => {
                    let outcome = outcomes.next();
                    self.settle_numbered(outcome, &doc, len, hash, op_id, ctx)
                }
                Slot::Done(result) => result,
                Slot::Repeats(first) => match answers.get(first) {
                    Some(Ok(w)) => Ok(Written {
                        seq: w.seq,
                        duplicate: true,
                    }),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(unchecked()),
                },
                Slot::Checking(..) | Slot::Accepted(..) => Err(unchecked()),
            };
            answers.push(answer);
        }
        Ok(answers)
    }
}

/// The error of a write whose check never answered (a bug, if it ever shows).
fn unchecked() -> Error {
    Error::Internal("a write of the batch was not checked".into())
}
