//! Hand-made Yjs v1 updates that a stock client would never send: the attacks the server
//! must refuse ([`crate::shape`], [`crate::crdt::DocState`]). Tests, the `hostile` load
//! scenario and the fuzz target share them, so each attack is written once.
//!
//! Every function answers the raw bytes of one v1 update (what a client would base64 into
//! `crdtBytes`).

/// A Yjs item id as the wire has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemId {
    pub client: u64,
    pub clock: u32,
}

/// Where an item says its parent is (when it has no origin).
#[derive(Debug, Clone)]
pub enum ParentRef {
    Root(String),
    Id(ItemId),
}

/// What an item holds.
#[derive(Debug, Clone)]
pub enum ItemContent {
    /// A string (clock length = UTF-16 length).
    Text(String),
    /// A shared map.
    Map,
}

/// One item to encode.
#[derive(Debug, Clone)]
pub struct Item {
    pub origin: Option<ItemId>,
    pub right_origin: Option<ItemId>,
    /// Used only when both origins are absent.
    pub parent: ParentRef,
    pub parent_sub: Option<String>,
    pub content: ItemContent,
}

impl Item {
    fn len(&self) -> u32 {
        match &self.content {
            ItemContent::Text(s) => s.encode_utf16().count() as u32,
            ItemContent::Map => 1,
        }
    }
}

/// Appends a lib0 var-uint.
pub fn write_var(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_var(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn write_id(out: &mut Vec<u8>, id: ItemId) {
    write_var(out, id.client);
    write_var(out, u64::from(id.clock));
}

fn write_item(out: &mut Vec<u8>, item: &Item) {
    let content_ref: u8 = match item.content {
        ItemContent::Text(_) => 4,
        ItemContent::Map => 7,
    };
    let has_origins = item.origin.is_some() || item.right_origin.is_some();
    let info = content_ref
        | if item.origin.is_some() { 0x80 } else { 0 }
        | if item.right_origin.is_some() { 0x40 } else { 0 }
        | if !has_origins && item.parent_sub.is_some() {
            0x20
        } else {
            0
        };
    out.push(info);
    if let Some(o) = item.origin {
        write_id(out, o);
    }
    if let Some(r) = item.right_origin {
        write_id(out, r);
    }
    if !has_origins {
        match &item.parent {
            ParentRef::Root(name) => {
                write_var(out, 1);
                write_str(out, name);
            }
            ParentRef::Id(id) => {
                write_var(out, 0);
                write_id(out, *id);
            }
        }
        if let Some(sub) = &item.parent_sub {
            write_str(out, sub);
        }
    }
    match &item.content {
        ItemContent::Text(s) => write_str(out, s),
        ItemContent::Map => out.push(1), // type ref: map
    }
}

/// One update: client sections of consecutive items (client, first clock, items), then a
/// delete set of (client, clock, len) ranges.
pub fn update(sections: &[(u64, u32, Vec<Item>)], deletes: &[(u64, u32, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_var(&mut out, sections.len() as u64);
    for (client, clock, items) in sections {
        write_var(&mut out, items.len() as u64);
        write_var(&mut out, *client);
        write_var(&mut out, u64::from(*clock));
        for item in items {
            write_item(&mut out, item);
        }
    }
    write_var(&mut out, deletes.len() as u64);
    for (client, clock, len) in deletes {
        write_var(&mut out, *client);
        write_var(&mut out, 1);
        write_var(&mut out, u64::from(*clock));
        write_var(&mut out, u64::from(*len));
    }
    out
}

/// Clock length of `items` laid one after another.
pub fn clock_len(items: &[Item]) -> u32 {
    items.iter().map(Item::len).sum()
}

/// `n` maps from `client`, each set at key "k" of the previous one (the first in root map
/// "m"): types nested `n` deep. With `delete_root`, the same update also deletes the first map,
/// which makes yrs delete the whole chain recursively.
pub fn nested_maps(client: u64, n: u32, delete_root: bool) -> Vec<u8> {
    let deletes: &[(u64, u32, u32)] = if delete_root { &[(client, 0, 1)] } else { &[] };
    update(&[(client, 0, nested_map_items(client, 0, n))], deletes)
}

/// Maps `from..to` of [`nested_maps`]'s chain, as one update (the chain sent in parts).
pub fn nested_maps_part(client: u64, from: u32, to: u32) -> Vec<u8> {
    update(&[(client, from, nested_map_items(client, from, to))], &[])
}

fn nested_map_items(client: u64, from: u32, to: u32) -> Vec<Item> {
    (from..to)
        .map(|i| Item {
            origin: None,
            right_origin: None,
            parent: match i.checked_sub(1) {
                None => ParentRef::Root("m".into()),
                Some(clock) => ParentRef::Id(ItemId { client, clock }),
            },
            parent_sub: Some("k".into()),
            content: ItemContent::Map,
        })
        .collect()
}

/// An update that only deletes `len` ids of `client` from `clock`.
pub fn delete(client: u64, clock: u32, len: u32) -> Vec<u8> {
    update(&[], &[(client, clock, len)])
}

/// A text of `n + 1` characters from client 1 at root "t": the base the quadratic attack
/// points into.
pub fn quadratic_base(n: u32) -> Vec<u8> {
    let item = Item {
        origin: None,
        right_origin: None,
        parent: ParentRef::Root("t".into()),
        parent_sub: None,
        content: ItemContent::Text("a".repeat(n as usize + 1)),
    };
    update(&[(1, 0, vec![item])], &[])
}

/// `n` one-character items, each from a different client, all with left origin 1#0 and
/// each with a different right origin 1#(i+1): integrating them costs O(n²) in yrs.
pub fn quadratic(n: u32) -> Vec<u8> {
    quadratic_part(0, n)
}

/// Items `from..to` of [`quadratic`], as one update (the attack spread over several writes).
pub fn quadratic_part(from: u32, to: u32) -> Vec<u8> {
    let sections: Vec<(u64, u32, Vec<Item>)> = (from..to)
        .map(|i| {
            let item = Item {
                origin: Some(ItemId {
                    client: 1,
                    clock: 0,
                }),
                right_origin: Some(ItemId {
                    client: 1,
                    clock: i + 1,
                }),
                parent: ParentRef::Root("t".into()),
                parent_sub: None,
                content: ItemContent::Text("x".into()),
            };
            (1000 + u64::from(i), 0, vec![item])
        })
        .collect();
    update(&sections, &[])
}

/// Two writes that each apply alone but break the document together: a string item whose
/// parent is given by id 9#0, then a string item that *is* 9#0.
pub fn invalid_parent_pair() -> (Vec<u8>, Vec<u8>) {
    let child = Item {
        origin: None,
        right_origin: None,
        parent: ParentRef::Id(ItemId {
            client: 9,
            clock: 0,
        }),
        parent_sub: None,
        content: ItemContent::Text("child".into()),
    };
    let parent = Item {
        origin: None,
        right_origin: None,
        parent: ParentRef::Root("t".into()),
        parent_sub: None,
        content: ItemContent::Text("not a type".into()),
    };
    (
        update(&[(1, 0, vec![child])], &[]),
        update(&[(9, 0, vec![parent])], &[]),
    )
}

/// A plain text insert of `s` at the start of root "t" from `client` at `clock`.
pub fn text(client: u64, clock: u32, s: &str) -> Vec<u8> {
    let item = Item {
        origin: None,
        right_origin: None,
        parent: ParentRef::Root("t".into()),
        parent_sub: None,
        content: ItemContent::Text(s.into()),
    };
    update(&[(client, clock, vec![item])], &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{DocState, YjsLimits};
    use crate::error::Error;

    fn apply(state: &mut DocState, bytes: &[u8]) -> Result<(), Error> {
        let limits = YjsLimits::default();
        state
            .apply("crdtBytes", bytes, &limits, limits.write_budget)
            .map_err(|r| r.error)
    }

    #[test]
    fn crafted_updates_decode_and_the_attacks_are_refused() {
        let mut state = DocState::new();
        apply(&mut state, &text(5, 0, "hello")).unwrap();
        // Within the depth bound: accepted.
        apply(&mut state, &nested_maps(6, 10, false)).unwrap();
        assert_eq!(state.depth(), 11);
        // 10,000 deep with the root deleted, in one update: refused, not a crash.
        let err = apply(&mut state, &nested_maps(7, 10_000, true)).unwrap_err();
        assert_eq!(err.code(), "yjs_limit", "{err}");
        // The pair: the second write is refused.
        let (a, b) = invalid_parent_pair();
        apply(&mut state, &a).unwrap();
        assert_eq!(apply(&mut state, &b).unwrap_err().code(), "yjs_limit");
        // Deleting works and stays shallow.
        apply(&mut state, &delete(6, 0, 1)).unwrap();
    }

    #[test]
    fn the_quadratic_update_is_stopped_by_its_budget() {
        let mut state = DocState::new();
        apply(&mut state, &quadratic_base(8_000)).unwrap();
        let limits = YjsLimits::default();
        let budget = std::time::Duration::from_millis(50);
        let started = crate::crdt::thread_cpu();
        let refused = state
            .apply("crdtBytes", &quadratic(8_000), &limits, budget)
            .unwrap_err();
        let spent = crate::crdt::thread_cpu() - started;
        assert_eq!(refused.error.code(), "yjs_limit", "{}", refused.error);
        assert!(refused.poisoned);
        assert!(
            spent < budget * 20,
            "spent {spent:?} against a budget of {budget:?}"
        );
    }
}
