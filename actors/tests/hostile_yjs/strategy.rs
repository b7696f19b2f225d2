//! proptest strategies for [`super::script::Op`]s.

use proptest::prelude::*;

use super::script::{Gen, Op, Pick, Place};

pub fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        3 => any::<u16>().prop_map(Pick::Known),
        3 => any::<u16>().prop_map(Pick::Type),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(c, k)| Pick::Random(c, k)),
    ]
}

pub fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        2 => any::<u8>().prop_map(Place::Root),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(r, k)| Place::RootKey(r, k)),
        3 => pick().prop_map(Place::Parent),
        1 => (pick(), any::<u8>()).prop_map(|(p, k)| Place::ParentKey(p, k)),
        3 => pick().prop_map(Place::Origin),
        1 => pick().prop_map(Place::Right),
        2 => (pick(), pick()).prop_map(|(a, b)| Place::Between(a, b)),
    ]
}

pub fn content() -> impl Strategy<Value = Gen> {
    prop_oneof![
        1 => any::<u8>().prop_map(Gen::Deleted),
        1 => any::<u8>().prop_map(Gen::Json),
        1 => any::<u8>().prop_map(Gen::Binary),
        4 => any::<u8>().prop_map(Gen::Str),
        1 => any::<u8>().prop_map(Gen::Embed),
        1 => any::<u8>().prop_map(Gen::Format),
        4 => any::<u8>().prop_map(Gen::Type),
        1 => any::<u8>().prop_map(Gen::Any),
        1 => any::<u8>().prop_map(Gen::Doc),
    ]
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Cut),
        10 => (any::<u8>(), place(), content())
            .prop_map(|(client, place, content)| Op::Item { client, place, content }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(client, len)| Op::Gc { client, len }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(client, len)| Op::Skip { client, len }),
        2 => (any::<u8>(), place(), any::<u8>(), any::<u8>(), any::<bool>()).prop_map(
            |(client, place, depth, type_ref, one_client_each)| Op::Chain {
                client,
                place,
                depth,
                type_ref,
                one_client_each,
            }
        ),
        2 => (pick(), any::<u8>()).prop_map(|(pick, len)| Op::Delete { pick, len }),
        1 => Just(Op::DeleteChainRoot),
        2 => (pick(), any::<u8>(), place())
            .prop_map(|(pick, extra, place)| Op::Resend { pick, extra, place }),
        3 => (any::<u8>(), any::<u8>(), any::<u16>())
            .prop_map(|(peer, edit, n)| Op::Honest { peer, edit, n }),
        1 => any::<u8>().prop_map(Op::Replay),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(at, xor)| Op::Corrupt { at, xor }),
    ]
}

pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..48)
}
