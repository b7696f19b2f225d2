//! A structure-aware generator of hostile update sequences to one document: a list of [`Op`]s
//! (what proptest generates and shrinks, or what the fuzz target decodes from its input) run by
//! a [`Script`] that keeps track of the ids it has made, so references can point at ids that
//! exist (items, types, GC ranges, honest peers' items) or do not.
//!
//! Uses `std`, `yrs` and [`super::wire`] only: the fuzz target includes it with `#[path]`.

#![allow(dead_code)]

use std::collections::HashMap;

use yrs::{Array, ArrayPrelim, Doc, GetString, Map, MapPrelim, Out, ReadTxn, Text, Transact};

use super::wire::{self, id, Any, Block, Content, Id, Item, Parent, Section};

/// Clients the hostile ops write as (small, medium and past 32 bits).
pub const CLIENTS: [u64; 6] = [1, 2, 3, 9, 300, (1 << 40) + 7];
/// Honest yrs peers' client ids.
pub const PEERS: [u64; 3] = [1001, 1002, 1003];
/// Root names hostile items use (the peers use "t", "m" and "a").
pub const ROOTS: [&str; 4] = ["t", "m", "a", "x"];

/// Which id an op refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// One of the ids made so far (any kind), by index modulo their number.
    Known(u16),
    /// One of the shared types made so far.
    Type(u16),
    /// An id that may not exist: client from the pool (or a peer), clock.
    Random(u8, u8),
}

/// Where a new item goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Root(u8),
    RootKey(u8, u8),
    Parent(Pick),
    ParentKey(Pick, u8),
    Origin(Pick),
    Right(Pick),
    Between(Pick, Pick),
}

/// What a new item holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gen {
    Deleted(u8),
    Json(u8),
    Binary(u8),
    Str(u8),
    Embed(u8),
    Format(u8),
    /// A shared type, by index into [`TYPE_REFS`].
    Type(u8),
    Any(u8),
    Doc(u8),
}

/// Type refs a hostile item may carry (7 and 8 are unknown to yrs without `weak`; 15 undefined).
pub const TYPE_REFS: [u8; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Ends the update being written; later ops go into the next one.
    Cut,
    Item {
        client: u8,
        place: Place,
        content: Gen,
    },
    Gc {
        client: u8,
        len: u8,
    },
    /// Leaves a gap in a client's clocks (a skip struct when the section is open).
    Skip {
        client: u8,
        len: u8,
    },
    /// `depth` nested types, each the parent (by id) of the next, the first placed at `place`.
    Chain {
        client: u8,
        place: Place,
        depth: u8,
        type_ref: u8,
        one_client_each: bool,
    },
    Delete {
        pick: Pick,
        len: u8,
    },
    /// Deletes the first type of the latest chain.
    DeleteChainRoot,
    /// Sends a known client's ids again from a known clock, with new content (a string) and
    /// placement, `extra` clocks past what the client has sent: part known, part new.
    Resend {
        pick: Pick,
        extra: u8,
        place: Place,
    },
    /// An honest edit by a yrs peer (its own update).
    Honest {
        peer: u8,
        edit: u8,
        n: u16,
    },
    /// Sends again an update already sent.
    Replay(u8),
    /// Flips bits of the update being written once it is encoded.
    Corrupt {
        at: u16,
        xor: u8,
    },
}

/// Whether `HOSTILE_YJS_AVOID` (comma-separated) names `what`: a way to keep generating
/// while a known hole is open, so the generator finds the next one. `json`: no JSON content
/// (bug "json"); `hook`: no type ref 5 (bug B); `resend`: no parts of known ids sent again
/// (bug A); `dupsection`: no update holds two sections of one client (bug G);
/// `peer` / `snapshot`: skip the peer-view / snapshot-keeps-content check (see
/// `harness::Checks::from_env`).
pub fn avoid(what: &str) -> bool {
    std::env::var("HOSTILE_YJS_AVOID").is_ok_and(|v| v.split(',').any(|w| w.trim() == what))
}

/// Runs [`Op`]s into a sequence of v1 updates.
pub struct Script {
    clocks: HashMap<u64, u32>,
    ids: Vec<Id>,
    types: Vec<Id>,
    chains: Vec<Id>,
    cur: wire::Update,
    corrupt: Vec<(u16, u8)>,
    pub out: Vec<Vec<u8>>,
    peers: Vec<Doc>,
}

impl Default for Script {
    fn default() -> Self {
        Script::new()
    }
}

impl Script {
    pub fn new() -> Script {
        Script {
            clocks: HashMap::new(),
            ids: Vec::new(),
            types: Vec::new(),
            chains: Vec::new(),
            cur: wire::Update::default(),
            corrupt: Vec::new(),
            out: Vec::new(),
            peers: PEERS.iter().map(|&c| Doc::with_client_id(c)).collect(),
        }
    }

    /// The updates `ops` make.
    pub fn updates(ops: &[Op]) -> Vec<Vec<u8>> {
        let mut s = Script::new();
        for op in ops {
            s.op(op);
        }
        s.cut();
        s.out
    }

    fn client(c: u8) -> u64 {
        CLIENTS[c as usize % CLIENTS.len()]
    }

    fn pick(&self, p: Pick) -> Id {
        match p {
            Pick::Known(i) if !self.ids.is_empty() => self.ids[i as usize % self.ids.len()],
            Pick::Type(i) if !self.types.is_empty() => self.types[i as usize % self.types.len()],
            Pick::Known(i) | Pick::Type(i) => id(Self::client(i as u8), u32::from(i >> 8)),
            Pick::Random(c, clock) => {
                let client = if c % 4 == 3 {
                    PEERS[c as usize / 4 % PEERS.len()]
                } else {
                    Self::client(c)
                };
                id(client, u32::from(clock % 24))
            }
        }
    }

    fn item(&self, place: Place, content: Content) -> Item {
        match place {
            Place::Root(r) => Item::root(ROOTS[r as usize % ROOTS.len()], content),
            Place::RootKey(r, k) => Item::root(ROOTS[r as usize % ROOTS.len()], content)
                .with_key(&format!("k{}", k % 4)),
            Place::Parent(p) => Item::child_of(self.pick(p), content),
            Place::ParentKey(p, k) => {
                Item::child_of(self.pick(p), content).with_key(&format!("k{}", k % 4))
            }
            Place::Origin(p) => Item::between(Some(self.pick(p)), None, content),
            Place::Right(p) => Item::between(None, Some(self.pick(p)), content),
            Place::Between(a, b) => Item::between(Some(self.pick(a)), Some(self.pick(b)), content),
        }
    }

    fn content(g: Gen) -> Content {
        let g = match g {
            Gen::Json(n) if avoid("json") => Gen::Str(n),
            Gen::Type(t) if avoid("hook") && TYPE_REFS[t as usize % TYPE_REFS.len()] == 5 => {
                Gen::Type(1)
            }
            g => g,
        };
        let s = |n: u8| -> String { "abcdefghijklmnop"[..(n as usize % 6) + 1].to_string() };
        match g {
            Gen::Deleted(n) => Content::Deleted(u32::from(n % 5) + 1),
            Gen::Json(n) => {
                Content::Json((0..=(n % 3)).map(|i| format!("{{\"j\":{i}}}")).collect())
            }
            Gen::Binary(n) => Content::Binary(vec![n; (n % 4) as usize]),
            Gen::Str(n) => match n % 8 {
                // Non-ASCII: UTF-16 lengths differ from byte lengths.
                0 => Content::Str("é😀".to_string()),
                1 => Content::Str(String::new()),
                _ => Content::Str(s(n)),
            },
            Gen::Embed(n) => Content::Embed(format!("{{\"e\":[{}]}}", n)),
            Gen::Format(n) => Content::Format(
                "bold".into(),
                if n % 2 == 0 {
                    "true".into()
                } else {
                    "null".into()
                },
            ),
            Gen::Type(t) => {
                let type_ref = TYPE_REFS[t as usize % TYPE_REFS.len()];
                // XML elements carry a name; yrs reads no name for hooks (ref 5).
                let name = (type_ref == 3).then(|| "p".to_string());
                Content::Type(type_ref, name)
            }
            Gen::Any(n) => Content::Any(
                (0..=(n % 3))
                    .map(|i| match n.wrapping_add(i) % 5 {
                        0 => Any::Null,
                        1 => Any::Bool(true),
                        2 => Any::Int(i64::from(n) - 100),
                        3 => Any::Array(vec![Any::Str(s(n)), Any::Float(1.5)]),
                        _ => Any::Map(vec![("k".into(), Any::Str(s(i)))]),
                    })
                    .collect(),
            ),
            Gen::Doc(n) => Content::Doc(
                format!("sub-{n}"),
                if n % 3 == 0 {
                    Any::Null
                } else {
                    Any::Map(vec![("gc".into(), Any::Bool(n % 2 == 0))])
                },
            ),
        }
    }

    /// Appends a block for `client` at its next clock and records the ids it makes.
    fn push(&mut self, client: u64, block: Block) -> Id {
        let clock = *self.clocks.get(&client).unwrap_or(&0);
        let len = block.len();
        let open = self.cur.sections.last().is_some_and(|s| {
            s.client == client && s.clock + s.blocks.iter().map(Block::len).sum::<u32>() == clock
        });
        if !open {
            self.cur
                .sections
                .push(Section::new(client, clock, Vec::new()));
        }
        let is_type = matches!(&block, Block::Item(i) if i.content.is_type());
        let record = !matches!(block, Block::Skip(_));
        self.cur.sections.last_mut().unwrap().blocks.push(block);
        self.clocks.insert(client, clock + len);
        let at = id(client, clock);
        if record && len > 0 {
            self.ids.push(at);
            if len > 1 {
                self.ids.push(id(client, clock + len - 1));
            }
            if is_type {
                self.types.push(at);
            }
        }
        at
    }

    fn cut(&mut self) {
        if self.cur.sections.is_empty() && self.cur.deletes.is_empty() && self.corrupt.is_empty() {
            return;
        }
        let mut bytes = std::mem::take(&mut self.cur).encode();
        for (at, xor) in self.corrupt.drain(..) {
            let n = bytes.len();
            bytes[at as usize % n] ^= xor;
        }
        self.out.push(bytes);
    }

    pub fn op(&mut self, op: &Op) {
        // Bound what one script can make, whatever the input.
        if self.out.len() >= 24 || self.ids.len() > 4000 {
            return;
        }
        match *op {
            Op::Cut => self.cut(),
            Op::Item {
                client,
                place,
                content,
            } => {
                let item = self.item(place, Self::content(content));
                self.push(Self::client(client), Block::Item(item));
            }
            Op::Gc { client, len } => {
                self.push(Self::client(client), Block::Gc(u32::from(len % 4) + 1));
            }
            Op::Skip { client, len } => {
                let client = Self::client(client);
                let len = u32::from(len % 4) + 1;
                let clock = *self.clocks.get(&client).unwrap_or(&0);
                let open = self.cur.sections.last().is_some_and(|s| s.client == client);
                if open && len % 2 == 0 {
                    self.push(client, Block::Skip(len));
                } else {
                    self.clocks.insert(client, clock + len);
                }
            }
            Op::Chain {
                client,
                place,
                depth,
                type_ref,
                one_client_each,
            } => {
                let depth = depth % 90 + 1;
                let type_ref = [1u8, 0, 2, 4, 6][type_ref as usize % 5];
                let mut prev = None;
                for i in 0..depth {
                    let c = if one_client_each {
                        Self::client(client.wrapping_add(i))
                    } else {
                        Self::client(client)
                    };
                    let item = match prev {
                        None => self.item(place, Content::Type(type_ref, None)),
                        Some(p) => Item::child_of(p, Content::Type(type_ref, None)),
                    };
                    let at = self.push(c, Block::Item(item));
                    if prev.is_none() {
                        self.chains.push(at);
                    }
                    prev = Some(at);
                }
            }
            Op::Delete { pick, len } => {
                let at = self.pick(pick);
                self.cur = std::mem::take(&mut self.cur).deleting(
                    at.client,
                    at.clock,
                    u32::from(len % 8) + 1,
                );
            }
            Op::DeleteChainRoot => {
                if let Some(&root) = self.chains.last() {
                    self.cur = std::mem::take(&mut self.cur).deleting(root.client, root.clock, 1);
                }
            }
            Op::Resend { .. } if avoid("resend") => {}
            Op::Resend { pick, extra, place } => {
                let at = self.pick(pick);
                if PEERS.contains(&at.client) {
                    return;
                }
                if avoid("dupsection") && self.cur.sections.iter().any(|s| s.client == at.client) {
                    self.cut();
                }
                let now = *self.clocks.get(&at.client).unwrap_or(&0);
                let start = at.clock.min(now);
                let len = (now - start) + u32::from(extra % 3);
                if len == 0 || len > 64 {
                    return;
                }
                let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
                let item = self.item(place, Content::Str(text));
                self.cur
                    .sections
                    .push(Section::items(at.client, start, vec![item]));
                self.clocks.insert(at.client, now.max(start + len));
                if start + len > now {
                    self.ids.push(id(at.client, start + len - 1));
                }
            }
            Op::Honest { peer, edit, n } => {
                self.cut();
                let i = peer as usize % self.peers.len();
                let doc = &self.peers[i];
                let before = doc
                    .transact()
                    .state_vector()
                    .get(&yrs::ClientID::new(PEERS[i]));
                let update = honest_edit(doc, edit, n);
                let after = doc
                    .transact()
                    .state_vector()
                    .get(&yrs::ClientID::new(PEERS[i]));
                for clock in (before..after).take(8) {
                    self.ids.push(id(PEERS[i], clock));
                }
                self.out.push(update);
            }
            Op::Replay(i) => {
                self.cut();
                if !self.out.is_empty() {
                    let u = self.out[i as usize % self.out.len()].clone();
                    self.out.push(u);
                }
            }
            Op::Corrupt { at, xor } => {
                if xor != 0 {
                    self.corrupt.push((at, xor));
                }
            }
        }
    }
}

/// One honest edit through yrs: text, maps, arrays, nested maps a level deeper each time.
pub fn honest_edit(doc: &Doc, edit: u8, n: u16) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let array = doc.get_or_insert_array("a");
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    let n32 = u32::from(n);
    match edit % 8 {
        0 => text.insert(&mut txn, n32 % (len + 1), &format!("w{n}")),
        1 if len > 0 => text.remove_range(&mut txn, n32 % len, (n32 % 3 + 1).min(len - n32 % len)),
        2 => {
            map.insert(
                &mut txn,
                format!("k{}", n % 5),
                MapPrelim::from([("v", yrs::Any::from(f64::from(n)))]),
            );
        }
        3 => {
            // One level deeper under "deep" each time.
            let mut cur = match map.get(&txn, "deep") {
                Some(Out::YMap(m)) => m,
                _ => map.insert(&mut txn, "deep", MapPrelim::default()),
            };
            while let Some(Out::YMap(next)) = cur.get(&txn, "deep") {
                cur = next;
            }
            cur.insert(&mut txn, "deep", MapPrelim::default());
        }
        4 => {
            array.push_back(
                &mut txn,
                yrs::Any::from(vec![yrs::Any::Bool(true), yrs::Any::from(format!("a{n}"))]),
            );
        }
        5 => {
            map.remove(&mut txn, &format!("k{}", n % 5));
        }
        6 => {
            let inner = array.insert(&mut txn, 0, ArrayPrelim::default());
            inner.push_back(&mut txn, yrs::Any::from(f64::from(n)));
        }
        _ => {
            let alen = array.len(&txn);
            if alen > 0 {
                array.remove(&mut txn, n32 % alen);
            } else {
                text.insert(&mut txn, 0, "z");
            }
        }
    }
    let _ = text.get_string(&txn);
    txn.encode_update_v1()
}

/// Decodes ops from raw bytes (the fuzz target's input): a few bytes per op.
pub fn ops_from_bytes(data: &[u8]) -> Vec<Op> {
    let mut r = Bytes { data, at: 0 };
    let mut ops = Vec::new();
    while r.at < data.len() && ops.len() < 256 {
        let tag = r.u8();
        let op = match tag % 16 {
            0 | 1 => Op::Cut,
            2..=4 => Op::Item {
                client: r.u8(),
                place: r.place(),
                content: r.gen(),
            },
            5 => Op::Gc {
                client: r.u8(),
                len: r.u8(),
            },
            6 => Op::Skip {
                client: r.u8(),
                len: r.u8(),
            },
            7 => Op::Chain {
                client: r.u8(),
                place: r.place(),
                depth: r.u8(),
                type_ref: r.u8(),
                one_client_each: r.u8().is_multiple_of(2),
            },
            8 => Op::Delete {
                pick: r.pick(),
                len: r.u8(),
            },
            9 => Op::DeleteChainRoot,
            10 | 11 => Op::Resend {
                pick: r.pick(),
                extra: r.u8(),
                place: r.place(),
            },
            12 | 13 => Op::Honest {
                peer: r.u8(),
                edit: r.u8(),
                n: u16::from(r.u8()),
            },
            14 => Op::Replay(r.u8()),
            _ => Op::Corrupt {
                at: u16::from(r.u8()) << 4 | u16::from(r.u8()),
                xor: r.u8(),
            },
        };
        ops.push(op);
    }
    ops
}

struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn pick(&mut self) -> Pick {
        let t = self.u8();
        let v = self.u8();
        match t % 3 {
            0 => Pick::Known(u16::from(v)),
            1 => Pick::Type(u16::from(v)),
            _ => Pick::Random(v, t / 3),
        }
    }
    fn place(&mut self) -> Place {
        match self.u8() % 7 {
            0 => Place::Root(self.u8()),
            1 => Place::RootKey(self.u8(), self.u8()),
            2 => Place::Parent(self.pick()),
            3 => Place::ParentKey(self.pick(), self.u8()),
            4 => Place::Origin(self.pick()),
            5 => Place::Right(self.pick()),
            _ => Place::Between(self.pick(), self.pick()),
        }
    }
    fn gen(&mut self) -> Gen {
        let t = self.u8();
        let v = self.u8();
        match t % 9 {
            0 => Gen::Deleted(v),
            1 => Gen::Json(v),
            2 => Gen::Binary(v),
            3 => Gen::Str(v),
            4 => Gen::Embed(v),
            5 => Gen::Format(v),
            6 => Gen::Type(v),
            7 => Gen::Any(v),
            _ => Gen::Doc(v),
        }
    }
}

/// Raw parent-info bytes: the var-uint 2^32 + 1 (yrs reads it as a wrapping u32: 1, a root
/// name) — see the `bug_parent_info_*` test.
pub fn parent_info_wrapping_to_one() -> Parent {
    Parent::Raw(vec![0x81, 0x80, 0x80, 0x80, 0x10])
}
