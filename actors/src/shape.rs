//! The shape of one document: which item ids exist, which of them are shared types, and how
//! deeply each container nests, built from [`crate::precheck::Layout`]s without asking yrs.
//!
//! # Why
//! yrs deletes and garbage-collects nested types recursively: a chain of 10,000 maps, each
//! the parent of the next, overflows the stack when its root is deleted, and a stack overflow
//! aborts the process (`catch_unwind` cannot catch it). The chain can be sent across many writes
//! (each one link), so the bound must hold for the document, not per update. yrs's public API
//! cannot tell an item's parent, so this module follows the same rules yrs uses to find it:
//! an item with an origin (or right origin) lives where that neighbour lives; one without names
//! a root type or the id of the item holding its parent type.
//!
//! It also refuses, by construction, what yrs would fail on later: an item whose parent id is
//! an item that holds no type (yrs answers `InvalidParent` on every later merge of the
//! document). Items that wait for an id the document does not have yet (as yrs keeps them
//! pending) are kept here too, and checked when the id arrives; their number is bounded.
//!
//! # Invariants
//! - Every accepted shared type nests at most `max_depth` deep (root types are depth 1).
//! - The model is conservative: where yrs would drop an item (a parent that was garbage
//!   collected), the model may still count it; it never counts less nesting than yrs builds.
//! - [`DocShape::stage`] changes nothing; only [`DocShape::commit`] of its answer does, so a
//!   refused update leaves no trace.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::precheck::{Content, Id, Kind, Layout, Parent};

/// Why an update's shape is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A shared type would nest deeper than allowed.
    TooDeep { depth: u32, max: u32 },
    /// An item names as its parent an item that holds no shared type.
    InvalidParent { client: u64, clock: u32 },
    /// Too many items would wait for ids the document does not have.
    TooManyPending { pending: usize, max: usize },
    /// A struct reuses ids of a struct still waiting for its dependencies: which one wins
    /// would depend on the order pieces are applied in, so peers could diverge.
    OverlapsPending { client: u64, clock: u32 },
    /// A client's ids would be integrated past ids of the same client that still wait: yrs's
    /// encoding of such a document puts the waiting ones first, and a document rebuilt from it
    /// loses the integrated ones.
    PastPending { client: u64, clock: u32 },
    /// A struct that names its parent resends ids the document has, with new ones after them:
    /// yrs integrates only the new part, with the known id before it as its origin, and that
    /// origin (not the named parent) is what its encoding keeps, so a document rebuilt from a
    /// snapshot could place it elsewhere.
    PartlyKnown { client: u64, clock: u32 },
    /// The delete set names ids the document does not have.
    DeletesUnknown { client: u64, clock: u32 },
    /// An item depends (by origin, right origin or parent) on an id of its own client that it
    /// comes before or holds: yrs integrates a client's ids in order, so a document rebuilt
    /// from its own encoding could never integrate it.
    ForwardReference { client: u64, clock: u32 },
    /// A map entry (an item under a map key, named or inherited from its neighbour) holds more
    /// than one live value. Yjs makes each `set` one item, so a map's earlier values are whole
    /// items that the next value deletes; a longer entry's first values stay live when a later
    /// item splits it, and a document rebuilt from a snapshot deletes them: peers diverge.
    LongMapEntry { client: u64, clock: u32 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooDeep { depth, max } => write!(
                f,
                "shared types would nest {depth} deep, more than the limit of {max}"
            ),
            Refusal::InvalidParent { client, clock } => write!(
                f,
                "an item's parent <{client}#{clock}> is an item that holds no shared type"
            ),
            Refusal::TooManyPending { pending, max } => write!(
                f,
                "{pending} items would wait for content the document does not have (limit {max})"
            ),
            Refusal::OverlapsPending { client, clock } => write!(
                f,
                "ids from <{client}#{clock}> are already held by an item waiting for its dependencies"
            ),
            Refusal::DeletesUnknown { client, clock } => write!(
                f,
                "the delete set names <{client}#{clock}>, which the document does not have"
            ),
            Refusal::ForwardReference { client, clock } => write!(
                f,
                "the item at <{client}#{clock}> depends on an id of its own client that does \
                 not come before it"
            ),
            Refusal::LongMapEntry { client, clock } => write!(
                f,
                "the map entry at <{client}#{clock}> holds more than one value; a map key takes \
                 one value per item"
            ),
            Refusal::PartlyKnown { client, clock } => write!(
                f,
                "an item that names its parent resends known ids up to <{client}#{clock}>; \
                 send only the new ids"
            ),
            Refusal::PastPending { client, clock } => write!(
                f,
                "client {client}'s ids would be integrated past <{client}#{clock}>, which still waits \
                 for its dependencies; send the missing updates first"
            ),
        }
    }
}

/// The container an item lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    /// Garbage: yrs drops the item (its parent is gone).
    Dead,
    /// A live container this many types deep (root types are 1).
    Depth(u32),
}

/// What a run of ids holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Gc,
    Item {
        container: Container,
        /// Whether the item is a map entry (under a key) rather than part of a sequence.
        keyed: bool,
        content: Content,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    len: u32,
    what: What,
}

/// An item waiting for an id the document does not have yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    id: Id,
    len: u32,
    kind: Kind,
}

/// The shape of one document; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct DocShape {
    runs: HashMap<u64, BTreeMap<u32, Run>>,
    /// Per client, the end of its ids integrated from clock 0 without a gap.
    prefix: HashMap<u64, u32>,
    pending: HashMap<u64, Pending>,
    /// Pending items by the id they wait for.
    waiting: HashMap<u64, BTreeMap<u32, Vec<u64>>>,
    next_pending: u64,
    deepest: u32,
}

/// Limits the shape enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    /// Deepest type nesting (roots are 1).
    pub max_depth: u32,
    /// Most items that may wait for missing ids in one document.
    pub max_pending: usize,
}

/// An accepted update's changes to a [`DocShape`], to [`DocShape::commit`].
#[derive(Debug, Default)]
pub struct Staged {
    runs: HashMap<u64, BTreeMap<u32, Run>>,
    resolved: HashSet<u64>,
    new_pending: Vec<(Pending, Id)>,
    rewait: Vec<(u64, Id)>,
    deepest: u32,
}

/// A unit of work while staging: a struct of the update (with the id of the struct before it
/// in its section, which yrs integrates first: a section stops at its first waiting struct),
/// or an existing pending item.
#[derive(Debug, Clone)]
enum Work {
    New(Pending, Option<Id>),
    Old(u64, Pending),
}

/// Per client, the sorted clock ranges `(start, end)` that `ids` (first id, length) cover,
/// with overlapping and touching ones joined.
pub fn clock_ranges(ids: impl Iterator<Item = (Id, u32)>) -> BTreeMap<u64, Vec<(u32, u32)>> {
    let mut by_client: BTreeMap<u64, Vec<(u32, u32)>> = BTreeMap::new();
    for (id, len) in ids.filter(|(_, len)| *len > 0) {
        by_client
            .entry(id.client)
            .or_default()
            .push((id.clock, id.clock + len));
    }
    for ranges in by_client.values_mut() {
        ranges.sort_unstable();
        let mut joined: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for &(start, end) in ranges.iter() {
            match joined.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => joined.push((start, end)),
            }
        }
        *ranges = joined;
    }
    by_client
}

/// The clock after the run of `client` that holds `clock`, if any.
fn run_end(runs: &HashMap<u64, BTreeMap<u32, Run>>, client: u64, clock: u32) -> Option<u32> {
    let (start, run) = runs.get(&client)?.range(..=clock).next_back()?;
    let end = start + run.len;
    (clock < end).then_some(end)
}

fn find(runs: &HashMap<u64, BTreeMap<u32, Run>>, id: Id) -> Option<What> {
    let (start, run) = runs.get(&id.client)?.range(..=id.clock).next_back()?;
    (id.clock < start + run.len).then_some(run.what)
}

/// The parts of `[start, start + len)` not covered by `runs` of one client.
fn gaps(runs: Option<&BTreeMap<u32, Run>>, start: u32, len: u32, out: &mut Vec<(u32, u32)>) {
    let end = start + len;
    let mut at = start;
    if let Some(runs) = runs {
        if let Some((s, r)) = runs.range(..start).next_back() {
            at = at.max(s + r.len);
        }
        for (s, r) in runs.range(start..end) {
            if *s > at {
                out.push((at, *s - at));
            }
            at = at.max(s + r.len);
        }
    }
    if at < end {
        out.push((at, end - at));
    }
}

impl DocShape {
    pub fn new() -> Self {
        DocShape::default()
    }

    /// Items waiting for ids the document does not have.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// How deeply the accepted types nest (roots are 1).
    pub fn deepest(&self) -> u32 {
        self.deepest
    }

    fn lookup(&self, staged: &Staged, id: Id) -> Option<What> {
        find(&staged.runs, id).or_else(|| find(&self.runs, id))
    }

    /// Checks an update's structs against this shape and answers what accepting it changes.
    ///
    /// # Errors
    /// A [`Refusal`]; nothing is changed either way.
    pub fn stage(&self, layout: &Layout, limits: ShapeLimits) -> Result<Staged, Refusal> {
        let mut staged = Staged {
            deepest: self.deepest,
            ..Staged::default()
        };
        // Items of this update waiting for an id: (client, clock) → works.
        let mut waiting: HashMap<u64, BTreeMap<u32, Vec<Work>>> = HashMap::new();
        let mut queue: VecDeque<Work> = VecDeque::with_capacity(layout.structs.len());
        for s in &layout.structs {
            if let Kind::Item {
                origin,
                right_origin,
                parent,
                ..
            } = s.kind
            {
                let parent = match parent {
                    Parent::Id(p) => Some(p),
                    Parent::Root | Parent::Inherit => None,
                };
                let own_later =
                    |id: &Id| id.client == s.id.client && id.clock >= s.id.clock && s.len > 0;
                if [origin, right_origin, parent]
                    .iter()
                    .flatten()
                    .any(own_later)
                {
                    return Err(Refusal::ForwardReference {
                        client: s.id.client,
                        clock: s.id.clock,
                    });
                }
            }
        }
        for section in &layout.sections {
            let mut previous = None;
            for s in &layout.structs[section.structs.clone()] {
                if s.kind == Kind::Skip || s.len == 0 {
                    continue;
                }
                let item = Pending {
                    id: s.id,
                    len: s.len,
                    kind: s.kind,
                };
                queue.push_back(Work::New(item, previous));
                previous = Some(s.id);
            }
        }
        let mut gap_buf = Vec::new();
        while let Some(work) = queue.pop_front() {
            let (item, previous) = match &work {
                Work::New(p, previous) => (p.clone(), *previous),
                Work::Old(pid, p) => {
                    if staged.resolved.contains(pid) {
                        continue; // woken twice
                    }
                    (p.clone(), None)
                }
            };
            let before = previous.filter(|id| self.lookup(&staged, *id).is_none());
            let resolved = match before {
                Some(id) => Ok(Err(id)),
                None => self.resolve(&staged, &item, limits),
            };
            let what = match resolved? {
                Ok(what) => what,
                Err(missing) => {
                    // Waits (again) within this update; what still waits at the end is pending.
                    waiting
                        .entry(missing.client)
                        .or_default()
                        .entry(missing.clock)
                        .or_default()
                        .push(work);
                    continue;
                }
            };
            if let Work::Old(pid, _) = work {
                staged.resolved.insert(pid);
            }
            if let What::Item {
                container: Container::Depth(d),
                content,
                ..
            } = what
            {
                let made = d + u32::from(content == Content::Type);
                staged.deepest = staged.deepest.max(made);
            }
            // Record the ids not known yet; known ids keep what they had (as yrs skips them).
            gap_buf.clear();
            let client = item.id.client;
            gaps(
                self.runs.get(&client),
                item.id.clock,
                item.len,
                &mut gap_buf,
            );
            for &(start, len) in &gap_buf {
                let mut inner = Vec::new();
                gaps(staged.runs.get(&client), start, len, &mut inner);
                for (s, l) in inner {
                    // yrs splits off the known part of a struct; the rest gets the id before it
                    // as its origin, so an item that names no parent lives where that one does.
                    let what = if s > item.id.clock {
                        if let Kind::Item {
                            parent: Parent::Root | Parent::Id(_),
                            ..
                        } = item.kind
                        {
                            return Err(Refusal::PartlyKnown { client, clock: s });
                        }
                        self.split_what(&staged, &item, s, what)
                    } else {
                        what
                    };
                    if let What::Item {
                        keyed: true,
                        content: Content::Type | Content::Other,
                        ..
                    } = what
                    {
                        if l > 1 {
                            return Err(Refusal::LongMapEntry { client, clock: s });
                        }
                    }
                    staged
                        .runs
                        .entry(client)
                        .or_default()
                        .insert(s, Run { len: l, what });
                    // Wake what waited for these ids.
                    let end = s + l;
                    if let Some(w) = waiting.get_mut(&client) {
                        let keys: Vec<u32> = w.range(s..end).map(|(k, _)| *k).collect();
                        for k in keys {
                            queue.extend(w.remove(&k).into_iter().flatten());
                        }
                    }
                    if let Some(w) = self.waiting.get(&client) {
                        for (_, pids) in w.range(s..end) {
                            for pid in pids {
                                if let Some(p) = self.pending.get(pid) {
                                    queue.push_back(Work::Old(*pid, p.clone()));
                                }
                            }
                        }
                    }
                }
            }
        }
        for (client, by_clock) in waiting {
            for (clock, works) in by_clock {
                let missing = Id { client, clock };
                for w in works {
                    match w {
                        Work::New(p, _) => staged.new_pending.push((p, missing)),
                        Work::Old(pid, _) if !staged.resolved.contains(&pid) => {
                            staged.rewait.push((pid, missing))
                        }
                        Work::Old(..) => {}
                    }
                }
            }
        }
        self.check_pending_order(layout, &staged)?;
        // yrs keeps deletes of ids a document lacks pending, without bound and forever: only
        // ids the document has (or this update brings) may be deleted.
        for &(client, clock, len) in &layout.deletes {
            let mut missing = Vec::new();
            gaps(self.runs.get(&client), clock, len, &mut missing);
            for (start, len) in missing {
                let mut still = Vec::new();
                gaps(staged.runs.get(&client), start, len, &mut still);
                if let Some(&(at, _)) = still.first() {
                    return Err(Refusal::DeletesUnknown { client, clock: at });
                }
            }
        }
        let pending = self.pending.len() - staged.resolved.len() + staged.new_pending.len();
        if pending > limits.max_pending {
            return Err(Refusal::TooManyPending {
                pending,
                max: limits.max_pending,
            });
        }
        Ok(staged)
    }

    /// Refuses what would make the document depend on the order of application (see
    /// [`Refusal::OverlapsPending`], [`Refusal::PastPending`]).
    fn check_pending_order(&self, layout: &Layout, staged: &Staged) -> Result<(), Refusal> {
        // Ids of items still waiting before this update, by client.
        let mut waiting: HashMap<u64, Vec<(u32, u32)>> = HashMap::new();
        for p in self.pending.values() {
            waiting
                .entry(p.id.client)
                .or_default()
                .push((p.id.clock, p.id.clock + p.len));
        }
        for s in layout.structs.iter().filter(|s| s.len > 0) {
            let (start, end) = (s.id.clock, s.id.clock + s.len);
            if let Some(ranges) = waiting.get(&s.id.client) {
                if let Some((clock, _)) = ranges.iter().find(|(a, b)| start < *b && *a < end) {
                    return Err(Refusal::OverlapsPending {
                        client: s.id.client,
                        clock: *clock,
                    });
                }
            }
        }
        // What still waits after this update, by client: its lowest clock.
        let mut lowest: HashMap<u64, u32> = HashMap::new();
        let still = self
            .pending
            .iter()
            .filter(|(pid, _)| !staged.resolved.contains(pid))
            .map(|(_, p)| p.id)
            .chain(staged.new_pending.iter().map(|(p, _)| p.id));
        for id in still {
            let low = lowest.entry(id.client).or_insert(id.clock);
            *low = (*low).min(id.clock);
        }
        for (client, low) in lowest {
            let end = |runs: &HashMap<u64, BTreeMap<u32, Run>>| {
                runs.get(&client)
                    .and_then(|r| r.iter().next_back())
                    .map(|(s, r)| s + r.len)
                    .unwrap_or(0)
            };
            if end(&self.runs).max(end(&staged.runs)) > low {
                return Err(Refusal::PastPending { client, clock: low });
            }
        }
        Ok(())
    }

    /// What the part of `item` from clock `from` on holds once yrs split off the part before
    /// (see [`Self::stage`]).
    fn split_what(&self, staged: &Staged, item: &Pending, from: u32, whole: What) -> What {
        let Kind::Item {
            parent: Parent::Inherit,
            right_origin,
            content,
            ..
        } = item.kind
        else {
            return whole;
        };
        let left = self.lookup(
            staged,
            Id {
                client: item.id.client,
                clock: from - 1,
            },
        );
        let right = right_origin.and_then(|r| self.lookup(staged, r));
        let (container, keyed) = match (left, right) {
            (
                Some(What::Item {
                    container, keyed, ..
                }),
                _,
            ) => (container, keyed),
            (
                _,
                Some(What::Item {
                    container, keyed, ..
                }),
            ) => (container, keyed),
            _ => (Container::Dead, false),
        };
        What::Item {
            container,
            keyed,
            content,
        }
    }

    /// Where `item` lives: `Ok(Ok(what))`, or `Ok(Err(id))` while it waits for `id`.
    fn resolve(
        &self,
        staged: &Staged,
        item: &Pending,
        limits: ShapeLimits,
    ) -> Result<Result<What, Id>, Refusal> {
        let (origin, right_origin, parent, keyed, content) = match item.kind {
            Kind::Gc => return Ok(Ok(What::Gc)),
            Kind::Skip => return Ok(Ok(What::Gc)),
            Kind::Item {
                origin,
                right_origin,
                parent,
                keyed,
                content,
            } => (origin, right_origin, parent, keyed, content),
        };
        let mut neighbours = [None, None];
        for (slot, id) in neighbours.iter_mut().zip([origin, right_origin]) {
            if let Some(id) = id {
                match self.lookup(staged, id) {
                    Some(what) => *slot = Some(what),
                    None => return Ok(Err(id)),
                }
            }
        }
        let mut keyed = keyed;
        let container = if origin.is_some() || right_origin.is_some() {
            // As yrs: the left neighbour's parent (and key) if it is an item, else the right
            // one's.
            let (container, neighbour_keyed) = match neighbours {
                [Some(What::Item {
                    container, keyed, ..
                }), _] => (container, keyed),
                [_, Some(What::Item {
                    container, keyed, ..
                })] => (container, keyed),
                _ => (Container::Dead, false),
            };
            keyed = neighbour_keyed;
            container
        } else {
            match parent {
                Parent::Root | Parent::Inherit => Container::Depth(1),
                Parent::Id(p) => match self.lookup(staged, p) {
                    None => return Ok(Err(p)),
                    Some(What::Gc) => Container::Dead,
                    Some(What::Item {
                        content: Content::Deleted,
                        ..
                    }) => Container::Dead,
                    Some(What::Item {
                        content: Content::Other,
                        ..
                    }) => {
                        return Err(Refusal::InvalidParent {
                            client: p.client,
                            clock: p.clock,
                        })
                    }
                    Some(What::Item {
                        content: Content::Type,
                        container,
                        ..
                    }) => match container {
                        Container::Dead => Container::Dead,
                        Container::Depth(d) => {
                            let depth = d + 1;
                            if depth > limits.max_depth {
                                return Err(Refusal::TooDeep {
                                    depth,
                                    max: limits.max_depth,
                                });
                            }
                            Container::Depth(depth)
                        }
                    },
                },
            }
        };
        if let (Content::Type, Container::Depth(d)) = (content, container) {
            // The type this item creates nests one deeper than the item.
            if d + 1 > limits.max_depth {
                return Err(Refusal::TooDeep {
                    depth: d + 1,
                    max: limits.max_depth,
                });
            }
        }
        Ok(Ok(What::Item {
            container,
            keyed,
            content,
        }))
    }

    /// How many of `client`'s ids, from clock 0 without a gap, the document integrates once
    /// `staged` is committed: what yrs's state vector must say for the model to be right.
    /// (yrs also integrates a block past a gap when it depends on nothing missing, leaving a
    /// skip; its state vector then stops at the gap, and so does this.)
    pub fn integrated_prefix(&self, staged: &Staged, client: u64) -> u32 {
        let mut at = self.prefix.get(&client).copied().unwrap_or(0);
        while let Some(end) =
            run_end(&staged.runs, client, at).or_else(|| run_end(&self.runs, client, at))
        {
            at = end;
        }
        at
    }

    /// The ids still waiting once `staged` is committed: per client, sorted clock ranges
    /// `(start, end)` with touching ones joined. yrs's pending update must hold the same.
    pub fn pending_after(&self, staged: &Staged) -> BTreeMap<u64, Vec<(u32, u32)>> {
        let still = self
            .pending
            .iter()
            .filter(|(pid, _)| !staged.resolved.contains(pid))
            .map(|(_, p)| p)
            .chain(staged.new_pending.iter().map(|(p, _)| p));
        clock_ranges(still.map(|p| (p.id, p.len)))
    }

    /// Applies what [`Self::stage`] answered for an update that was then accepted.
    pub fn commit(&mut self, staged: Staged) {
        for (client, runs) in staged.runs {
            let mine = self.runs.entry(client).or_default();
            for (start, run) in runs {
                insert_run(mine, start, run);
            }
            let prefix = self.prefix.entry(client).or_default();
            while let Some(end) = run_end(&self.runs, client, *prefix) {
                *prefix = end;
            }
        }
        for pid in &staged.resolved {
            if let Some(p) = self.pending.remove(pid) {
                self.unwait(*pid, &p);
            }
        }
        for (pid, id) in staged.rewait {
            if let Some(p) = self.pending.get(&pid).cloned() {
                self.unwait(pid, &p);
                self.wait(pid, id);
            }
        }
        for (p, id) in staged.new_pending {
            let pid = self.next_pending;
            self.next_pending += 1;
            self.pending.insert(pid, p);
            self.wait(pid, id);
        }
        self.deepest = staged.deepest;
    }

    fn wait(&mut self, pid: u64, id: Id) {
        self.waiting
            .entry(id.client)
            .or_default()
            .entry(id.clock)
            .or_default()
            .push(pid);
    }

    fn unwait(&mut self, pid: u64, _p: &Pending) {
        // Pending items are few (bounded by `max_pending`): a scan is cheaper than an index.
        for by_clock in self.waiting.values_mut() {
            by_clock.retain(|_, pids| {
                pids.retain(|x| *x != pid);
                !pids.is_empty()
            });
        }
        self.waiting.retain(|_, m| !m.is_empty());
    }
}

/// Inserts a run, merging it with its left neighbour when they hold the same thing, so a
/// document typed one character per update keeps one run per client and container.
fn insert_run(runs: &mut BTreeMap<u32, Run>, start: u32, run: Run) {
    if let Some((s, left)) = runs.range_mut(..start).next_back() {
        if s + left.len == start && left.what == run.what {
            left.len += run.len;
            return;
        }
    }
    runs.insert(start, run);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precheck::{Section, Struct};

    const LIMITS: ShapeLimits = ShapeLimits {
        max_depth: 4,
        max_pending: 3,
    };

    fn id(client: u64, clock: u32) -> Id {
        Id { client, clock }
    }

    fn item(at: Id, parent: Parent, content: Content) -> Struct {
        Struct {
            id: at,
            len: 1,
            kind: Kind::Item {
                origin: None,
                right_origin: None,
                parent,
                keyed: false,
                content,
            },
            bytes: 0..0,
        }
    }

    fn layout(structs: Vec<Struct>) -> Layout {
        Layout {
            sections: vec![Section {
                client: 0,
                structs: 0..structs.len(),
            }],
            structs,
            ..Layout::default()
        }
    }

    fn accept(shape: &mut DocShape, structs: Vec<Struct>) -> Result<(), Refusal> {
        let staged = shape.stage(&layout(structs), LIMITS)?;
        shape.commit(staged);
        Ok(())
    }

    /// A chain of maps, each the parent of the next: type i at id (1, i).
    fn chain(n: u32) -> Vec<Struct> {
        (0..n)
            .map(|i| {
                let parent = if i == 0 {
                    Parent::Root
                } else {
                    Parent::Id(id(1, i - 1))
                };
                item(id(1, i), parent, Content::Type)
            })
            .collect()
    }

    #[test]
    fn nesting_is_bounded_within_and_across_updates() {
        // Root container is depth 1; types at (1,0),(1,1),(1,2) make containers 2, 3, 4.
        let mut shape = DocShape::new();
        accept(&mut shape, chain(3)).unwrap();
        assert_eq!(shape.deepest(), 4);
        // One more link, in a later update, would make depth 5.
        let link = item(id(1, 3), Parent::Id(id(1, 2)), Content::Type);
        let staged = shape.stage(&layout(vec![link.clone()]), LIMITS);
        assert_eq!(staged.err(), Some(Refusal::TooDeep { depth: 5, max: 4 }));
        // A refused update changed nothing: a sibling at an allowed depth still goes in.
        accept(
            &mut shape,
            vec![item(id(2, 0), Parent::Id(id(1, 1)), Content::Other)],
        )
        .unwrap();
        // And all of it in one update is refused too.
        assert!(DocShape::new().stage(&layout(chain(5)), LIMITS).is_err());
    }

    #[test]
    fn chain_sent_backwards_is_checked_when_it_connects() {
        let mut shape = DocShape::new();
        // Links 4..1 first: they wait for their parents.
        for i in (1..4).rev() {
            accept(
                &mut shape,
                vec![item(id(1, i), Parent::Id(id(1, i - 1)), Content::Type)],
            )
            .unwrap();
        }
        assert_eq!(shape.pending(), 3);
        // A fourth waiting item is past max_pending.
        let extra = item(id(9, 0), Parent::Id(id(8, 0)), Content::Other);
        assert!(matches!(
            shape.stage(&layout(vec![extra]), LIMITS),
            Err(Refusal::TooManyPending { .. })
        ));
        // The root connects them: depth 1 + 4 types = 5 > 4.
        let root = item(id(1, 0), Parent::Root, Content::Type);
        assert!(matches!(
            shape.stage(&layout(vec![root]), LIMITS),
            Err(Refusal::TooDeep { .. })
        ));
    }

    #[test]
    fn parent_must_hold_a_type() {
        let mut shape = DocShape::new();
        // Write 1: an item whose parent is (9,0), unknown yet: it waits.
        accept(
            &mut shape,
            vec![item(id(1, 0), Parent::Id(id(9, 0)), Content::Other)],
        )
        .unwrap();
        // Write 2: (9,0) is a string item: yrs would fail every later merge. Refused.
        let staged = shape.stage(
            &layout(vec![item(id(9, 0), Parent::Root, Content::Other)]),
            LIMITS,
        );
        assert_eq!(
            staged.err(),
            Some(Refusal::InvalidParent {
                client: 9,
                clock: 0
            })
        );
        // (9,0) as a map is fine, and resolves the waiting item.
        accept(
            &mut shape,
            vec![item(id(9, 0), Parent::Root, Content::Type)],
        )
        .unwrap();
        assert_eq!(shape.pending(), 0);
        // Deleted content as a parent is what yrs drops, not refuses.
        accept(
            &mut shape,
            vec![
                item(id(3, 0), Parent::Root, Content::Deleted),
                item(id(3, 1), Parent::Id(id(3, 0)), Content::Type),
            ],
        )
        .unwrap();
    }

    #[test]
    fn origins_inherit_the_neighbours_container() {
        let mut shape = DocShape::new();
        accept(&mut shape, chain(3)).unwrap(); // containers up to depth 4
        let mut s = item(id(5, 0), Parent::Inherit, Content::Type);
        // Left origin is the item at (1,2), which lives at depth 3; a type there makes 4.
        s.kind = Kind::Item {
            origin: Some(id(1, 2)),
            right_origin: None,
            parent: Parent::Inherit,
            keyed: false,
            content: Content::Type,
        };
        accept(&mut shape, vec![s]).unwrap();
        // A child of (5,0) would be depth 5.
        let child = item(id(5, 1), Parent::Id(id(5, 0)), Content::Type);
        assert!(shape.stage(&layout(vec![child]), LIMITS).is_err());
    }

    #[test]
    fn runs_merge_and_known_ids_are_skipped() {
        let mut shape = DocShape::new();
        for clock in 0..100 {
            let mut s = item(id(1, clock), Parent::Root, Content::Other);
            if clock > 0 {
                s.kind = Kind::Item {
                    origin: Some(id(1, clock - 1)),
                    right_origin: None,
                    parent: Parent::Inherit,
                    keyed: false,
                    content: Content::Other,
                };
            }
            accept(&mut shape, vec![s]).unwrap();
        }
        assert_eq!(shape.runs[&1].len(), 1, "one run for a client typing");
        // Resending known ids as a type changes nothing.
        accept(
            &mut shape,
            vec![item(id(1, 5), Parent::Root, Content::Type)],
        )
        .unwrap();
        assert_eq!(shape.runs[&1].len(), 1);
    }

    fn keyed(at: Id, len: u32, origin: Option<Id>, content: Content) -> Struct {
        Struct {
            id: at,
            len,
            kind: Kind::Item {
                origin,
                right_origin: None,
                parent: if origin.is_some() {
                    Parent::Inherit
                } else {
                    Parent::Root
                },
                keyed: origin.is_none(),
                content,
            },
            bytes: 0..0,
        }
    }

    #[test]
    fn a_map_entry_holds_one_live_value() {
        let mut shape = DocShape::new();
        // A named key with two values in one item.
        let long = keyed(id(1, 0), 2, None, Content::Other);
        assert_eq!(
            shape.stage(&layout(vec![long]), LIMITS).err(),
            Some(Refusal::LongMapEntry {
                client: 1,
                clock: 0
            })
        );
        // Deleted values may come merged (yrs merges a key's deleted values in its encoding).
        accept(&mut shape, vec![keyed(id(1, 0), 3, None, Content::Deleted)]).unwrap();
        accept(&mut shape, vec![keyed(id(2, 0), 1, None, Content::Other)]).unwrap();
        // An item after a map entry is an entry of the same key: one value at a time.
        let after = keyed(id(3, 0), 2, Some(id(2, 0)), Content::Other);
        assert_eq!(
            shape.stage(&layout(vec![after]), LIMITS).err(),
            Some(Refusal::LongMapEntry {
                client: 3,
                clock: 0
            })
        );
        accept(
            &mut shape,
            vec![keyed(id(3, 0), 1, Some(id(2, 0)), Content::Type)],
        )
        .unwrap();
        // In a sequence, long items are the norm.
        let mut text = keyed(id(4, 0), 5, None, Content::Other);
        text.kind = Kind::Item {
            origin: None,
            right_origin: None,
            parent: Parent::Root,
            keyed: false,
            content: Content::Other,
        };
        accept(&mut shape, vec![text]).unwrap();
        accept(
            &mut shape,
            vec![keyed(id(5, 0), 4, Some(id(4, 2)), Content::Other)],
        )
        .unwrap();
    }

    #[test]
    fn a_resent_tail_of_a_map_entry_holds_one_value() {
        let mut shape = DocShape::new();
        accept(&mut shape, vec![keyed(id(1, 0), 1, None, Content::Other)]).unwrap();
        // Ids 0..3 again, inheriting: 1..3 are new, after <1#0>, so a two-value entry.
        let resend = keyed(id(1, 0), 3, Some(id(7, 0)), Content::Other);
        accept(&mut shape, vec![keyed(id(7, 0), 1, None, Content::Other)]).unwrap();
        assert_eq!(
            shape.stage(&layout(vec![resend]), LIMITS).err(),
            Some(Refusal::LongMapEntry {
                client: 1,
                clock: 1
            })
        );
    }
}
