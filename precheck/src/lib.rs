//! A bounds check and layout scan of the Yjs v1 update encoding, run before yrs decodes
//! untrusted bytes.
//!
//! yrs trusts declared counts: it reserves a hash map or vector of the declared size before
//! reading the elements (a few bytes can declare four billion entries: seen here as 130 ms of
//! page faults for one 200-byte random input), and it decodes nested `Any` values recursively
//! (deep nesting would overflow the stack, which `catch_unwind` cannot catch). This walker
//! follows the same layout without allocating per declared count and rejects any count larger
//! than the bytes left (every element takes at least one byte) and nesting deeper than
//! [`MAX_ANY_DEPTH`].
//!
//! [`scan_update`] also answers the [`Layout`]: every struct's id, length, origins, parent and
//! content kind, and where each struct's bytes lie. The server's actors (`replicate-actors`:
//! `shape`, `crdt`) use it to bound type nesting across writes and to apply an update in small
//! chunks so a CPU budget can stop it between chunks. It does not prove the update is valid;
//! yrs's own decode does that.
//!
//! A crate of its own, with no dependencies, so that the Rust client (`replicate-client`)
//! checks what a server sends it the same way the server checks what clients send: one change
//! nested 100,000 values deep overflowed the client's stack, which aborts the app.

use std::ops::Range;

/// Deepest nesting of `Any` arrays/maps accepted (JSON-like values Yjs clients store).
pub const MAX_ANY_DEPTH: usize = 64;

/// A Yjs item id: (client, clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    pub client: u64,
    pub clock: u32,
}

/// What a struct holds, as far as nesting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// A shared type (map, array, text, XML): other items may name it as their parent.
    Type,
    /// Deleted content: items naming it as parent are dropped by yrs, not refused.
    Deleted,
    /// Any other content (strings, values, embeds, formats, binaries, sub-documents).
    Other,
}

/// How a struct names its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// Not encoded: the parent is the origin's (or the right origin's).
    Inherit,
    /// A root type, by name.
    Root,
    /// The type created by the item with this id.
    Id(Id),
}

/// The kind of one struct in an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Garbage-collected range: ids that exist but hold nothing.
    Gc,
    /// A gap the update does not cover.
    Skip,
    Item {
        origin: Option<Id>,
        right_origin: Option<Id>,
        parent: Parent,
        /// Whether the struct names a map key (`parentSub`): it is then one entry of a map.
        keyed: bool,
        content: Content,
    },
}

/// One struct of an update (`len` 0: an empty item yrs drops; it still counts as a block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Struct {
    pub id: Id,
    pub len: u32,
    pub kind: Kind,
    /// Where the struct's encoding lies in the update's bytes.
    pub bytes: Range<usize>,
}

/// One client section of an update: consecutive structs of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub client: u64,
    /// Indices into [`Layout::structs`].
    pub structs: Range<usize>,
}

/// The scanned layout of a v1 update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub structs: Vec<Struct>,
    pub sections: Vec<Section>,
    /// Where the delete set starts in the update's bytes.
    pub delete_set_at: usize,
    /// Clock ranges in the delete set.
    pub delete_ranges: usize,
    /// The delete set's non-empty ranges: (client, clock, len).
    pub deletes: Vec<(u64, u32, u32)>,
}

struct Walker<'a> {
    bytes: &'a [u8],
    at: usize,
}

type Check<T> = Result<T, &'static str>;

impl<'a> Walker<'a> {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    fn u8(&mut self) -> Check<u8> {
        let b = *self.bytes.get(self.at).ok_or("truncated")?;
        self.at += 1;
        Ok(b)
    }

    /// A lib0 var-uint of up to 64 bits.
    fn var(&mut self) -> Check<u64> {
        let mut value: u64 = 0;
        for shift in 0..10 {
            let b = self.u8()?;
            value |= u64::from(b & 0x7f)
                .checked_shl(7 * shift)
                .ok_or("varint too long")?;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long")
    }

    /// A var-uint that yrs reads as a u32.
    fn var32(&mut self) -> Check<u32> {
        u32::try_from(self.var()?).map_err(|_| "number too large")
    }

    /// A client id: Yjs makes them 53-bit (a JavaScript safe integer), and yrs assumes it.
    fn client(&mut self) -> Check<u64> {
        let client = self.var()?;
        if client >= 1 << 53 {
            return Err("client id is larger than 53 bits");
        }
        Ok(client)
    }

    fn id(&mut self) -> Check<Id> {
        Ok(Id {
            client: self.client()?,
            clock: self.var32()?,
        })
    }

    /// A count of elements that each take at least `min_bytes` bytes (yrs reads counts as
    /// u32, wrapping larger numbers: they are refused here, so both sides agree).
    fn count(&mut self, min_bytes: u64) -> Check<u64> {
        let n = u64::from(self.var32()?);
        if n.saturating_mul(min_bytes) > self.left() {
            return Err("declares more elements than it has bytes");
        }
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> Check<()> {
        if n > self.left() {
            return Err("truncated");
        }
        self.at += n as usize;
        Ok(())
    }

    /// A length-prefixed buffer; answers its bytes.
    fn buf(&mut self) -> Check<&'a [u8]> {
        let n = u64::from(self.var32()?);
        let start = self.at;
        self.skip(n)?;
        Ok(&self.bytes[start..self.at])
    }

    /// A length-prefixed UTF-8 string (yrs refuses anything else).
    fn str(&mut self) -> Check<&'a str> {
        std::str::from_utf8(self.buf()?).map_err(|_| "string is not UTF-8")
    }

    fn any(&mut self, depth: usize) -> Check<()> {
        if depth > MAX_ANY_DEPTH {
            return Err("values nested too deeply");
        }
        match self.u8()? {
            127 | 126 | 121 | 120 => Ok(()),
            125 => self.var().map(drop),
            124 => self.skip(4),
            123 | 122 => self.skip(8),
            119 => self.str().map(drop),
            116 => self.buf().map(drop),
            118 => {
                for _ in 0..self.count(2)? {
                    self.str()?;
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            117 => {
                for _ in 0..self.count(1)? {
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            _ => Err("unknown value type"),
        }
    }

    /// Walks one item's content; answers its kind and length in yrs's clock units.
    fn content(&mut self, info: u8) -> Check<(Content, u64)> {
        match info & 0b1111 {
            1 => Ok((Content::Deleted, u64::from(self.var32()?))),
            // JSON content (legacy): yrs 0.28 reads count + 1 strings but writes count, so it
            // could not read back its own encoding of a document holding one.
            2 => Err("JSON content (legacy) is not supported"),
            3 => self.buf().map(|_| (Content::Other, 1)),
            5 => self.str().map(|_| (Content::Other, 1)),
            4 => {
                let s = self.str()?;
                Ok((Content::Other, s.encode_utf16().count() as u64))
            }
            6 => {
                self.str()?;
                self.str()?;
                Ok((Content::Other, 1))
            }
            // Type refs as yrs 0.28 reads them: only an XML element carries a name (an XML
            // hook's name, which Yjs writes, yrs does not read: refused, so both agree), and
            // weak links and sub-document types are not accepted.
            7 => match self.u8()? {
                3 => self.str().map(|_| (Content::Type, 1)),
                0 | 1 | 2 | 4 | 6 | 15 => Ok((Content::Type, 1)),
                _ => Err("unsupported type reference"),
            },
            8 => {
                let n = self.count(1)?;
                for _ in 0..n {
                    self.any(0)?;
                }
                Ok((Content::Other, n))
            }
            9 => {
                self.str()?;
                self.any(0)?;
                Ok((Content::Other, 1))
            }
            _ => Err("unknown content type"),
        }
    }

    /// One struct at `id`. An item with empty content has `len` 0: yrs decodes and drops it.
    fn block(&mut self, id: Id) -> Check<Struct> {
        let start = self.at;
        let info = self.u8()?;
        // As yrs: only the whole info byte 0 (GC) or 10 (skip) is a range block.
        let (kind, len) = match info {
            0 | 10 => {
                let len = u64::from(self.var32()?);
                if len == 0 {
                    return Err("empty block");
                }
                let kind = if info == 0 { Kind::Gc } else { Kind::Skip };
                (kind, len)
            }
            _ => {
                let origin = (info & 0x80 != 0).then(|| self.id()).transpose()?;
                let right_origin = (info & 0x40 != 0).then(|| self.id()).transpose()?;
                let mut parent = Parent::Inherit;
                let mut keyed = false;
                if origin.is_none() && right_origin.is_none() {
                    parent = if self.var32()? == 1 {
                        self.str()?;
                        Parent::Root
                    } else {
                        Parent::Id(self.id()?)
                    };
                    if info & 0x20 != 0 {
                        self.str()?;
                        keyed = true;
                    }
                }
                let (content, len) = self.content(info)?;
                let kind = Kind::Item {
                    origin,
                    right_origin,
                    parent,
                    keyed,
                    content,
                };
                (kind, len)
            }
        };
        let len = u32::try_from(len).map_err(|_| "struct too long")?;
        if id.clock.checked_add(len).is_none() {
            return Err("clock overflows");
        }
        Ok(Struct {
            id,
            len,
            kind,
            bytes: start..self.at,
        })
    }

    fn update(&mut self) -> Check<Layout> {
        let mut layout = Layout::default();
        let mut clients = std::collections::HashSet::new();
        for _ in 0..self.count(3)? {
            let blocks = self.count(1)?;
            let client = self.client()?;
            // Yjs writes one section per client; yrs and Yjs disagree on what a second means.
            if !clients.insert(client) {
                return Err("two sections for one client");
            }
            let mut clock = self.var32()?;
            let first = layout.structs.len();
            for _ in 0..blocks {
                let s = self.block(Id { client, clock })?;
                clock = clock.checked_add(s.len).ok_or("clock overflows")?;
                layout.structs.push(s);
            }
            layout.sections.push(Section {
                client,
                structs: first..layout.structs.len(),
            });
        }
        layout.delete_set_at = self.at;
        // Delete set: clients, then (clock, len) ranges per client.
        for _ in 0..self.count(2)? {
            let client = self.client()?;
            for _ in 0..self.count(2)? {
                let clock = u64::from(self.var32()?);
                let len = u64::from(self.var32()?);
                if clock
                    .checked_add(len)
                    .is_none_or(|end| end > u64::from(u32::MAX))
                {
                    return Err("delete range overflows");
                }
                layout.delete_ranges += 1;
                if len > 0 {
                    layout.deletes.push((client, clock as u32, len as u32));
                }
            }
        }
        if self.at != self.bytes.len() {
            return Err("trailing bytes after the update");
        }
        Ok(layout)
    }
}

/// Checks the layout of a v1 update and answers it; `Err` carries the reason.
pub fn scan_update(bytes: &[u8]) -> Result<Layout, &'static str> {
    Walker { bytes, at: 0 }.update()
}

/// Checks the layout of a v1 update; `Err` carries the reason.
pub fn check_update(bytes: &[u8]) -> Result<(), &'static str> {
    scan_update(bytes).map(drop)
}

/// Checks the layout of a v1 state vector.
pub fn check_state_vector(bytes: &[u8]) -> Result<(), &'static str> {
    let mut w = Walker { bytes, at: 0 };
    for _ in 0..w.count(2)? {
        w.client()?;
        w.var32()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_lying_counts_and_deep_nesting() {
        // One client with one Any block (info 8, parent named "t"), holding a map that declares
        // 2^32 entries.
        let bomb = [
            1, 1, 1, 0, 8, 1, 1, b't', 1, 118, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0,
        ];
        assert_eq!(
            check_update(&bomb),
            Err("declares more elements than it has bytes")
        );
        let mut deep = vec![1, 1, 1, 0, 8, 1, 1, b't', 1];
        deep.extend(std::iter::repeat_n([117u8, 1], 100).flatten());
        deep.extend([126, 0]);
        assert_eq!(check_update(&deep), Err("values nested too deeply"));
        assert_eq!(
            check_update(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err("declares more elements than it has bytes")
        );
        assert_eq!(check_update(&[0, 0]), Ok(()));
    }
}
