//! The live collection actors of this process: one per collection, started on demand, looked
//! up by name, evicted when idle, and the state they all share ([`Shared`]).
//!
//! [`crate::runtime::Replicate`] asks the registry for a collection's actor; actors ask it to
//! remove them when they stop. Loading a collection reads the store, so it runs under that
//! collection's own lock, never the registry's: loading one collection holds up only requests
//! for that collection, and no incarnation can start, write and stop while another caller's
//! load of the same collection reads the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use actix::prelude::*;

use crate::clock::Clock;
use crate::collection::{CollectionActor, HeadMoved, StopIfQuiet};
use crate::compactor::StateCache;
use crate::config::Config;
use crate::doc_cache::DocCache;
use crate::durability::GroupCommit;
use crate::error::Result;
use crate::store::{Claim, Store};
use crate::workers::Workers;

/// State shared by the handle and every actor.
pub(crate) struct Shared {
    pub store: Store,
    /// This handle's ownership of `store`, released when this is dropped or the handle is
    /// closed (see [`Store`]'s invariants).
    pub claim: Claim,
    pub commit: GroupCommit,
    pub clock: Arc<dyn Clock>,
    pub config: Config,
    /// Checks, merges and per-document recovery (bounded queue, large stacks).
    pub workers: Workers,
    /// Whole-collection `state` and recovery, on their own queue so per-document work never
    /// waits behind them.
    pub state_workers: Workers,
    /// Per-document recovery, on its own queue so write checks never wait behind it.
    pub recovery_workers: Workers,
    /// Stream pages, on an engine whose reads are round trips (see `ReadPage`); `None` on
    /// sled, whose pages the actors read themselves.
    pub read_workers: Option<Workers>,
    /// Documents kept built to check writes against.
    pub docs: DocCache,
    /// Merged whole-collection states by head seq.
    pub states: StateCache,
    pub registry: Registry,
}

impl Shared {
    /// Removes collection `name` from the registry if incarnation `id` is still the one
    /// registered and nothing is admitted for it. Returns whether it did.
    pub fn evict(&self, name: &str, id: u64) -> bool {
        self.registry.evict(name, id)
    }
}

/// A live actor: its address, its admission counter, and which incarnation it is.
struct Entry {
    id: u64,
    addr: Addr<CollectionActor>,
    in_flight: Arc<AtomicUsize>,
    /// When this entry was last asked for (a registry-wide counter), for LRU eviction.
    last_used: u64,
}

/// While over the cap of live actors, every this many lookups of a live actor also ask the
/// excess to stop (an O(live) pass, so not on every request).
const OVER_CAP_RECHECK: u64 = 64;

/// An actor's address and the counter of requests admitted for it.
pub(crate) type Live = (Addr<CollectionActor>, Arc<AtomicUsize>);

/// See the module docs.
pub(crate) struct Registry {
    live: Mutex<HashMap<String, Entry>>,
    /// One lock per collection being loaded; entries go once no caller holds them.
    loading: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    /// `Config::max_live_collections`.
    max_live: usize,
    /// Incarnation ids and LRU ticks.
    next_id: AtomicU64,
}

impl Registry {
    /// A registry starting actors on `arbiters`, in turn, keeping about `max_live` live.
    pub fn new(arbiters: Vec<ArbiterHandle>, max_live: usize) -> Registry {
        Registry {
            live: Mutex::default(),
            loading: Mutex::default(),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            max_live: max_live.max(1),
            next_id: AtomicU64::new(0),
        }
    }

    /// The collection's actor and admission counter, starting the actor if needed.
    pub fn actor(&self, shared: &Arc<Shared>, c: &str) -> Result<Live> {
        if let Some(live) = self.live_actor(c) {
            return Ok(live);
        }
        let gate = recover(self.loading.lock())
            .entry(c.to_string())
            .or_default()
            .clone();
        let started = {
            let _loading = recover(gate.lock());
            match self.live_actor(c) {
                Some(live) => Ok(live),
                None => self.start_actor(shared, c),
            }
        };
        let mut loading = recover(self.loading.lock());
        // Only the map and this caller hold it: nobody else waits for this collection.
        if Arc::strong_count(&gate) == 2 {
            loading.remove(c);
        }
        started
    }

    /// The live actor of collection `c` and its admission counter, if one runs.
    fn live_actor(&self, c: &str) -> Option<Live> {
        let mut map = self.lock();
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let live = map.get_mut(c).filter(|e| e.addr.connected()).map(|e| {
            e.last_used = id;
            (e.addr.clone(), e.in_flight.clone())
        });
        if id.is_multiple_of(OVER_CAP_RECHECK) {
            ask_excess_to_stop(&map, self.max_live);
        }
        live
    }

    /// Loads collection `c` from the store and registers its new actor (the caller holds the
    /// collection's loading lock).
    fn start_actor(&self, shared: &Arc<Shared>, c: &str) -> Result<Live> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let actor = CollectionActor::load(c.to_string(), id, shared.clone(), in_flight.clone())?;
        let mut map = self.lock();
        // Make room for the new one (which is never asked: it has a caller waiting).
        ask_excess_to_stop(&map, self.max_live.saturating_sub(1));
        let arbiter =
            &self.arbiters[self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len()];
        let addr = CollectionActor::start_in_arbiter(arbiter, move |_| actor);
        map.insert(
            c.to_string(),
            Entry {
                id,
                addr: addr.clone(),
                in_flight: in_flight.clone(),
                last_used: id,
            },
        );
        Ok((addr, in_flight))
    }

    /// The map of live actors, taken back from a panic if one poisoned the lock (see
    /// [`recover`]).
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        recover(self.live.lock())
    }

    /// Removes collection `name` if incarnation `id` is still the one registered and nothing
    /// is admitted for it. Returns whether it did.
    pub fn evict(&self, name: &str, id: u64) -> bool {
        let mut map = self.lock();
        match map.get(name) {
            Some(e) if e.id == id && e.in_flight.load(Ordering::SeqCst) == 0 => {
                map.remove(name);
                true
            }
            _ => false,
        }
    }

    /// Tells collection `c`'s actor, if one runs here, of a head another node committed.
    pub fn head_moved(&self, c: &str, head: u64) {
        let addr = self.lock().get(c).map(|e| e.addr.clone());
        if let Some(addr) = addr {
            addr.do_send(HeadMoved { head });
        }
    }

    /// Whether collection `c` has a live actor.
    pub fn contains(&self, c: &str) -> bool {
        self.lock().contains_key(c)
    }

    /// Every live actor.
    pub fn addrs(&self) -> Vec<Addr<CollectionActor>> {
        self.lock().values().map(|e| e.addr.clone()).collect()
    }

    /// Requests admitted across every live actor.
    pub fn in_flight(&self) -> usize {
        self.lock()
            .values()
            .map(|e| e.in_flight.load(Ordering::SeqCst))
            .sum()
    }

    /// Forgets every actor (they stop with their arbiters).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// Takes a registry lock back from a panic that poisoned it. Every critical section here
/// leaves its map whole (an entry is inserted or removed in one call, after anything that may
/// panic, such as starting the actor), so the data is consistent; answering `Internal` for
/// good instead, as before, turned one panic into a handle that refused every later call.
fn recover<T>(locked: std::sync::LockResult<MutexGuard<'_, T>>) -> MutexGuard<'_, T> {
    locked.unwrap_or_else(PoisonError::into_inner)
}

/// Asks the least recently used quiet actors to stop, as many as the registry holds past
/// `max_live`. An actor stops only if it is quiet when the message arrives, so the cap is soft
/// under a burst; asking for the whole excess (not one actor per start, as before issue 13)
/// and asking again on later lookups ([`OVER_CAP_RECHECK`]) brings it back under the cap
/// once the burst is over. (One ask per start let a burst of 3,000 new collections leave
/// 3,000 actors live past a cap of 1,000 until their idle timeout.)
fn ask_excess_to_stop(map: &HashMap<String, Entry>, max_live: usize) {
    let excess = map.len().saturating_sub(max_live);
    if excess == 0 {
        return;
    }
    let mut quiet: Vec<&Entry> = map
        .values()
        .filter(|e| e.in_flight.load(Ordering::SeqCst) == 0)
        .collect();
    let n = excess.min(quiet.len());
    if n == 0 {
        return;
    }
    if n < quiet.len() {
        quiet.select_nth_unstable_by_key(n - 1, |e| e.last_used);
    }
    for e in &quiet[..n] {
        let _ = e.addr.try_send(StopIfQuiet);
    }
}
