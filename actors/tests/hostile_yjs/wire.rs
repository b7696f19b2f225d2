//! A hand-written encoder of Yjs v1 updates: the layout `precheck::scan_update` walks, written
//! byte by byte so a test can say anything the format can say (and some things it cannot),
//! without going through yrs.
//!
//! Only `std`: the fuzz target includes this file with `#[path]`.

#![allow(dead_code)]

/// A Yjs item id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    pub client: u64,
    pub clock: u32,
}

pub const fn id(client: u64, clock: u32) -> Id {
    Id { client, clock }
}

/// How an item without origins names its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parent {
    /// A root type by name (parent info 1).
    Root(String),
    /// The type created by the item with this id (parent info 0).
    Id(Id),
    /// Raw parent-info var-uint bytes followed by raw bytes, for layout-confusion probes.
    Raw(Vec<u8>),
}

/// A lib0 `Any` value (the subset the tests need).
#[derive(Debug, Clone, PartialEq)]
pub enum Any {
    Undefined,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Any>),
    Map(Vec<(String, Any)>),
    Buffer(Vec<u8>),
}

/// Item content, by content ref number.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// 1: deleted content of this length.
    Deleted(u32),
    /// 2: JSON strings (yrs reads `count + 1` strings; this writes `len - 1` then all).
    Json(Vec<String>),
    /// 3
    Binary(Vec<u8>),
    /// 4
    Str(String),
    /// 5: JSON text.
    Embed(String),
    /// 6: key and JSON text.
    Format(String, String),
    /// 7: a shared type: type ref, and the name bytes for refs that carry one here.
    Type(u8, Option<String>),
    /// 8
    Any(Vec<Any>),
    /// 9: sub-document guid and options.
    Doc(String, Any),
    /// Anything: content ref number and its raw bytes.
    Raw(u8, Vec<u8>),
}

pub const ARRAY: u8 = 0;
pub const MAP: u8 = 1;
pub const TEXT: u8 = 2;
pub const XML_ELEMENT: u8 = 3;
pub const XML_FRAGMENT: u8 = 4;
pub const XML_HOOK: u8 = 5;
pub const XML_TEXT: u8 = 6;

impl Content {
    pub fn map() -> Content {
        Content::Type(MAP, None)
    }
    pub fn array() -> Content {
        Content::Type(ARRAY, None)
    }
    pub fn str(s: &str) -> Content {
        Content::Str(s.to_string())
    }

    fn ref_number(&self) -> u8 {
        match self {
            Content::Deleted(_) => 1,
            Content::Json(_) => 2,
            Content::Binary(_) => 3,
            Content::Str(_) => 4,
            Content::Embed(_) => 5,
            Content::Format(..) => 6,
            Content::Type(..) => 7,
            Content::Any(_) => 8,
            Content::Doc(..) => 9,
            Content::Raw(n, _) => *n,
        }
    }

    /// Length in clock units, as yrs counts it (UTF-16 for strings).
    pub fn len(&self) -> u32 {
        match self {
            Content::Deleted(n) => *n,
            Content::Json(v) => v.len() as u32,
            Content::Str(s) => s.encode_utf16().count() as u32,
            Content::Any(v) => v.len() as u32,
            Content::Raw(..) => 1,
            _ => 1,
        }
    }

    pub fn is_type(&self) -> bool {
        matches!(self, Content::Type(..))
    }
}

/// One struct of a client section.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Gc(u32),
    Skip(u32),
    Item(Item),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub origin: Option<Id>,
    pub right_origin: Option<Id>,
    /// Written only when there is no origin and no right origin.
    pub parent: Parent,
    /// Written only when the parent is written.
    pub parent_sub: Option<String>,
    pub content: Content,
}

impl Item {
    pub fn root(name: &str, content: Content) -> Item {
        Item {
            origin: None,
            right_origin: None,
            parent: Parent::Root(name.to_string()),
            parent_sub: None,
            content,
        }
    }
    pub fn child_of(parent: Id, content: Content) -> Item {
        Item {
            origin: None,
            right_origin: None,
            parent: Parent::Id(parent),
            parent_sub: None,
            content,
        }
    }
    pub fn after(origin: Id, content: Content) -> Item {
        Item {
            origin: Some(origin),
            right_origin: None,
            parent: Parent::Root(String::new()),
            parent_sub: None,
            content,
        }
    }
    pub fn between(origin: Option<Id>, right_origin: Option<Id>, content: Content) -> Item {
        Item {
            origin,
            right_origin,
            parent: Parent::Root(String::new()),
            parent_sub: None,
            content,
        }
    }
    pub fn with_key(mut self, key: &str) -> Item {
        self.parent_sub = Some(key.to_string());
        self
    }
}

impl Block {
    /// Clock units this struct covers.
    pub fn len(&self) -> u32 {
        match self {
            Block::Gc(n) | Block::Skip(n) => *n,
            Block::Item(i) => i.content.len(),
        }
    }
}

/// Consecutive structs of one client, starting at `clock`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub client: u64,
    pub clock: u32,
    pub blocks: Vec<Block>,
}

impl Section {
    pub fn new(client: u64, clock: u32, blocks: Vec<Block>) -> Section {
        Section {
            client,
            clock,
            blocks,
        }
    }
    pub fn items(client: u64, clock: u32, items: Vec<Item>) -> Section {
        Section::new(client, clock, items.into_iter().map(Block::Item).collect())
    }
}

/// A whole v1 update: client sections, then the delete set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    pub sections: Vec<Section>,
    /// (client, [(clock, len)]).
    pub deletes: Vec<(u64, Vec<(u32, u32)>)>,
}

impl Update {
    pub fn new(sections: Vec<Section>) -> Update {
        Update {
            sections,
            deletes: Vec::new(),
        }
    }
    pub fn deleting(mut self, client: u64, clock: u32, len: u32) -> Update {
        match self.deletes.iter_mut().find(|(c, _)| *c == client) {
            Some((_, ranges)) => ranges.push((clock, len)),
            None => self.deletes.push((client, vec![(clock, len)])),
        }
        self
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.var(self.sections.len() as u64);
        for s in &self.sections {
            w.var(s.blocks.len() as u64);
            w.var(s.client);
            w.var(u64::from(s.clock));
            for b in &s.blocks {
                w.block(b);
            }
        }
        w.var(self.deletes.len() as u64);
        for (client, ranges) in &self.deletes {
            w.var(*client);
            w.var(ranges.len() as u64);
            for (clock, len) in ranges {
                w.var(u64::from(*clock));
                w.var(u64::from(*len));
            }
        }
        w.out
    }
}

/// A lib0 v1 writer.
#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn var(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        self.out.push(n as u8);
    }

    /// lib0 signed var-int (sign in bit 6 of the first byte).
    pub fn var_signed(&mut self, n: i64) {
        let neg = n < 0;
        let mut v = n.unsigned_abs();
        let first =
            (if v > 0x3f { 0x80 } else { 0 }) | (if neg { 0x40 } else { 0 }) | (v & 0x3f) as u8;
        self.out.push(first);
        v >>= 6;
        while v > 0 {
            self.out
                .push((if v > 0x7f { 0x80 } else { 0 }) | (v & 0x7f) as u8);
            v >>= 7;
        }
    }

    pub fn buf(&mut self, b: &[u8]) {
        self.var(b.len() as u64);
        self.out.extend_from_slice(b);
    }

    pub fn string(&mut self, s: &str) {
        self.buf(s.as_bytes());
    }

    pub fn id(&mut self, id: Id) {
        self.var(id.client);
        self.var(u64::from(id.clock));
    }

    pub fn any(&mut self, a: &Any) {
        match a {
            Any::Undefined => self.out.push(127),
            Any::Null => self.out.push(126),
            Any::Int(i) => {
                self.out.push(125);
                self.var_signed(*i);
            }
            Any::Float(f) => {
                self.out.push(123);
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Any::Bool(false) => self.out.push(121),
            Any::Bool(true) => self.out.push(120),
            Any::Str(s) => {
                self.out.push(119);
                self.string(s);
            }
            Any::Map(entries) => {
                self.out.push(118);
                self.var(entries.len() as u64);
                for (k, v) in entries {
                    self.string(k);
                    self.any(v);
                }
            }
            Any::Array(items) => {
                self.out.push(117);
                self.var(items.len() as u64);
                for v in items {
                    self.any(v);
                }
            }
            Any::Buffer(b) => {
                self.out.push(116);
                self.buf(b);
            }
        }
    }

    pub fn block(&mut self, b: &Block) {
        match b {
            Block::Gc(n) => {
                self.out.push(0);
                self.var(u64::from(*n));
            }
            Block::Skip(n) => {
                self.out.push(10);
                self.var(u64::from(*n));
            }
            Block::Item(item) => self.item(item),
        }
    }

    pub fn item(&mut self, item: &Item) {
        let has_origins = item.origin.is_some() || item.right_origin.is_some();
        let mut info = item.content.ref_number() & 0x1f;
        if item.origin.is_some() {
            info |= 0x80;
        }
        if item.right_origin.is_some() {
            info |= 0x40;
        }
        if !has_origins && item.parent_sub.is_some() {
            info |= 0x20;
        }
        self.out.push(info);
        if let Some(o) = item.origin {
            self.id(o);
        }
        if let Some(o) = item.right_origin {
            self.id(o);
        }
        if !has_origins {
            match &item.parent {
                Parent::Root(name) => {
                    self.var(1);
                    self.string(name);
                }
                Parent::Id(p) => {
                    self.var(0);
                    self.id(*p);
                }
                Parent::Raw(bytes) => self.out.extend_from_slice(bytes),
            }
            if let Some(key) = &item.parent_sub {
                self.string(key);
            }
        }
        self.content(&item.content);
    }

    pub fn content(&mut self, c: &Content) {
        match c {
            Content::Deleted(n) => self.var(u64::from(*n)),
            Content::Json(strings) => {
                self.var(strings.len().saturating_sub(1) as u64);
                for s in strings {
                    self.string(s);
                }
            }
            Content::Binary(b) => self.buf(b),
            Content::Str(s) => self.string(s),
            Content::Embed(json) => self.string(json),
            Content::Format(k, json) => {
                self.string(k);
                self.string(json);
            }
            Content::Type(type_ref, name) => {
                self.out.push(*type_ref);
                if let Some(name) = name {
                    self.string(name);
                }
            }
            Content::Any(values) => {
                self.var(values.len() as u64);
                for v in values {
                    self.any(v);
                }
            }
            Content::Doc(guid, options) => {
                self.string(guid);
                self.any(options);
            }
            Content::Raw(_, bytes) => self.out.extend_from_slice(bytes),
        }
    }
}

/// One struct of an update as yrs 0.28 decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub id: Id,
    pub len: u32,
    pub kind: ParsedKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedKind {
    Gc,
    Skip,
    Item {
        origin: Option<Id>,
        right_origin: Option<Id>,
        /// None: inherited from the origins.
        parent: Option<Result<String, Id>>,
        parent_sub: Option<Vec<u8>>,
        /// 1 deleted, 7 type, other content ref numbers otherwise.
        content: u8,
        /// The content split in clock units (UTF-16 code units of strings, values of `Any`
        /// and JSON content, nothing for deleted content, the whole content otherwise).
        units: Vec<Vec<u8>>,
    },
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.at).ok_or("truncated")?;
        self.at += 1;
        Ok(v)
    }
    fn var(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * shift);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    fn buf(&mut self) -> Result<&[u8], String> {
        let n = self.var()? as usize;
        let start = self.at;
        if self.b.len() - start < n {
            return Err("truncated".into());
        }
        self.at += n;
        Ok(&self.b[start..self.at])
    }
    fn id(&mut self) -> Result<Id, String> {
        Ok(Id {
            client: self.var()?,
            clock: self.var()? as u32,
        })
    }
    /// Reads one `Any` and answers a canonical encoding of it (map entries sorted by key:
    /// yrs writes its maps in hash order).
    fn any(&mut self) -> Result<Vec<u8>, String> {
        let start = self.at;
        let tag = self.u8()?;
        match tag {
            127 | 126 | 121 | 120 => {}
            125 => {
                self.var()?;
            }
            124 => self.at += 4,
            123 | 122 => self.at += 8,
            119 | 116 => {
                self.buf()?;
            }
            118 => {
                let mut entries = Vec::new();
                for _ in 0..self.var()? {
                    let k = self.buf()?.to_vec();
                    entries.push((k, self.any()?));
                }
                entries.sort();
                let mut out = vec![118];
                for (k, v) in entries {
                    out.extend(k);
                    out.push(0xff);
                    out.extend(v);
                }
                return Ok(out);
            }
            117 => {
                let mut out = vec![117];
                for _ in 0..self.var()? {
                    out.extend(self.any()?);
                }
                out.push(0xfe);
                return Ok(out);
            }
            t => return Err(format!("unknown any {t}")),
        }
        if self.at > self.b.len() {
            return Err("truncated".into());
        }
        Ok(self.b[start..self.at].to_vec())
    }
}

/// Decodes the structs of a v1 update the way yrs 0.28 does (no name after type ref 5, JSON
/// content holds count + 1 strings), for updates yrs itself encoded.
pub fn parse_v1(bytes: &[u8]) -> Result<Vec<Parsed>, String> {
    let mut r = Reader { b: bytes, at: 0 };
    let mut out = Vec::new();
    for _ in 0..r.var()? {
        let n = r.var()?;
        let client = r.var()?;
        let mut clock = r.var()? as u32;
        for _ in 0..n {
            let info = r.u8()?;
            let (len, kind) = match info {
                0 => (r.var()? as u32, ParsedKind::Gc),
                10 => (r.var()? as u32, ParsedKind::Skip),
                _ => {
                    let origin = if info & 0x80 != 0 {
                        Some(r.id()?)
                    } else {
                        None
                    };
                    let right_origin = if info & 0x40 != 0 {
                        Some(r.id()?)
                    } else {
                        None
                    };
                    let mut parent = None;
                    let mut parent_sub = None;
                    if origin.is_none() && right_origin.is_none() {
                        parent = Some(if r.var()? as u32 == 1 {
                            Ok(String::from_utf8_lossy(r.buf()?).into_owned())
                        } else {
                            Err(r.id()?)
                        });
                        if info & 0x20 != 0 {
                            parent_sub = Some(r.buf()?.to_vec());
                        }
                    }
                    let content = info & 0x0f;
                    let start = r.at;
                    let mut units = Vec::new();
                    let len = match content {
                        1 => r.var()? as u32,
                        2 => {
                            let n = r.var()? as u32;
                            for _ in 0..=n {
                                units.push(r.buf()?.to_vec());
                            }
                            n + 1
                        }
                        3 | 5 => {
                            r.buf()?;
                            1
                        }
                        4 => {
                            let s = String::from_utf8_lossy(r.buf()?).into_owned();
                            units.extend(s.encode_utf16().map(|u| u.to_le_bytes().to_vec()));
                            units.len() as u32
                        }
                        6 => {
                            r.buf()?;
                            r.buf()?;
                            1
                        }
                        7 => {
                            if r.u8()? == 3 {
                                r.buf()?;
                            }
                            1
                        }
                        8 => {
                            let n = r.var()? as u32;
                            for _ in 0..n {
                                units.push(r.any()?);
                            }
                            n
                        }
                        9 => {
                            let mut unit = r.buf()?.to_vec();
                            unit.extend(r.any()?);
                            units.push(unit);
                            1
                        }
                        c => return Err(format!("unknown content {c}")),
                    };
                    if matches!(content, 3 | 5 | 6 | 7) {
                        units.push(r.b[start..r.at].to_vec());
                    }
                    (
                        len,
                        ParsedKind::Item {
                            origin,
                            right_origin,
                            parent,
                            parent_sub,
                            content,
                            units,
                        },
                    )
                }
            };
            if len > 0 {
                out.push(Parsed {
                    id: Id { client, clock },
                    len,
                    kind,
                });
            }
            clock += len;
        }
    }
    Ok(out)
}

/// How deeply the shared types of a v1 update nest (roots are 1: an item in a root type counts
/// 1, a type item there counts 2), computed independently of `replicate_actors` (its own
/// decoding of yrs's layout, [`parse_v1`]) by following each struct's origin, right origin or
/// parent the way yrs resolves them. Meant for updates where every id appears once (a
/// document's own encoding), where it is exact for what is integrated; structs whose
/// dependencies are absent are left out.
pub fn nesting_depth(structs: &[Parsed]) -> u32 {
    use std::collections::BTreeMap;
    let mut by_start: BTreeMap<(u64, u32), usize> = BTreeMap::new();
    for (i, s) in structs.iter().enumerate() {
        if s.kind != ParsedKind::Skip {
            by_start.insert((s.id.client, s.id.clock), i);
        }
    }
    let find = |id: Id| -> Option<usize> {
        let (&(c, start), &i) = by_start.range(..=(id.client, id.clock)).next_back()?;
        (c == id.client && id.clock < start + structs[i].len).then_some(i)
    };
    #[derive(Clone, Copy, PartialEq)]
    enum R {
        Unknown,
        Gc,
        /// Container depth (None: dead) and content ref number.
        Item(Option<u32>, u8),
    }
    let mut resolved = vec![R::Unknown; structs.len()];
    let mut changed = true;
    while changed {
        changed = false;
        for (i, s) in structs.iter().enumerate() {
            if resolved[i] != R::Unknown {
                continue;
            }
            let r = match &s.kind {
                ParsedKind::Skip => continue,
                ParsedKind::Gc => R::Gc,
                ParsedKind::Item {
                    origin,
                    right_origin,
                    parent,
                    content,
                    ..
                } => {
                    let container = match parent {
                        None => {
                            let mut sides = [R::Unknown, R::Unknown];
                            let mut missing = false;
                            for (slot, id) in sides.iter_mut().zip([*origin, *right_origin]) {
                                if let Some(id) = id {
                                    match find(id).map(|j| resolved[j]) {
                                        Some(R::Unknown) | None => missing = true,
                                        Some(r) => *slot = r,
                                    }
                                }
                            }
                            if missing {
                                continue;
                            }
                            match sides {
                                [R::Item(c, _), _] => c,
                                [_, R::Item(c, _)] => c,
                                _ => None,
                            }
                        }
                        Some(Ok(_root)) => Some(1),
                        Some(Err(p)) => match find(*p).map(|j| resolved[j]) {
                            Some(R::Unknown) | None => continue,
                            Some(R::Item(Some(d), 7)) => Some(d + 1),
                            Some(_) => None,
                        },
                    };
                    R::Item(container, *content)
                }
            };
            resolved[i] = r;
            changed = true;
        }
    }
    resolved
        .iter()
        .filter_map(|r| match r {
            R::Item(Some(d), c) => Some(d + u32::from(*c == 7)),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// One clock unit of a document: what a struct says about this id, with the struct's split
/// points taken out (a unit past a struct's first has origin `(client, clock - 1)` and
/// inherits its parent, as yrs splits and squashes items), so two encodings of the same state
/// compare equal however their items are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    Gc,
    Item {
        origin: Option<Id>,
        right_origin: Option<Id>,
        parent: Option<Result<String, Id>>,
        parent_sub: Option<Vec<u8>>,
        content: u8,
        payload: Vec<u8>,
    },
}

/// Every clock unit of an update, by id (skips left out).
pub fn units(structs: &[Parsed]) -> std::collections::BTreeMap<Id, Unit> {
    let mut out = std::collections::BTreeMap::new();
    for s in structs {
        for k in 0..s.len {
            let at = Id {
                client: s.id.client,
                clock: s.id.clock + k,
            };
            let unit = match &s.kind {
                ParsedKind::Skip => continue,
                ParsedKind::Gc => Unit::Gc,
                ParsedKind::Item {
                    origin,
                    right_origin,
                    parent,
                    parent_sub,
                    content,
                    units,
                } => Unit::Item {
                    origin: if k == 0 {
                        *origin
                    } else {
                        Some(Id {
                            client: at.client,
                            clock: at.clock - 1,
                        })
                    },
                    right_origin: *right_origin,
                    parent: if k == 0 && origin.is_none() && right_origin.is_none() {
                        parent.clone()
                    } else {
                        None
                    },
                    parent_sub: if k == 0 { parent_sub.clone() } else { None },
                    content: *content,
                    payload: units.get(k as usize).cloned().unwrap_or_default(),
                },
            };
            out.insert(at, unit);
        }
    }
    out
}
