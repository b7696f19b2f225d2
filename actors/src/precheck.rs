//! A bounds check of the Yjs v1 update layout, run before yrs decodes untrusted bytes.
//!
//! yrs trusts declared counts: it reserves a hash map or vector of the declared size before
//! reading the elements (a few bytes can declare four billion entries: seen here as 130 ms of
//! page faults for one 200-byte random input), and it decodes nested `Any` values recursively
//! (deep nesting would overflow the stack, which `catch_unwind` cannot catch). This walker
//! follows the same layout without allocating and rejects any count larger than the bytes left
//! (every element takes at least one byte) and nesting deeper than [`MAX_ANY_DEPTH`].
//! It does not prove the update is valid; yrs's own decode, run next, does that.

/// Deepest nesting of `Any` arrays/maps accepted (JSON-like values Yjs clients store).
pub const MAX_ANY_DEPTH: usize = 64;

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

    /// A count of elements that each take at least `min_bytes` bytes.
    fn count(&mut self, min_bytes: u64) -> Check<u64> {
        let n = self.var()?;
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

    fn buf(&mut self) -> Check<()> {
        let n = self.var()?;
        self.skip(n)
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
            119 | 116 => self.buf(),
            118 => {
                for _ in 0..self.count(2)? {
                    self.buf()?;
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

    fn content(&mut self, info: u8) -> Check<()> {
        match info & 0b1111 {
            1 => self.var().map(drop),
            2 => {
                // yrs reads count + 1 strings here.
                let n = self.count(1)?;
                for _ in 0..=n {
                    self.buf()?;
                }
                Ok(())
            }
            3..=5 => self.buf(),
            6 => {
                self.buf()?;
                self.buf()
            }
            7 => match self.u8()? {
                3 | 5 => self.buf(),
                0..=9 | 15 => Ok(()),
                _ => Err("unknown type reference"),
            },
            8 => {
                for _ in 0..self.count(1)? {
                    self.any(0)?;
                }
                Ok(())
            }
            9 => {
                self.buf()?;
                self.any(0)
            }
            _ => Err("unknown content type"),
        }
    }

    fn block(&mut self) -> Check<()> {
        let info = self.u8()?;
        // As yrs: only the whole info byte 0 (GC) or 10 (skip) is a range block.
        match info {
            0 | 10 => {
                if self.var()? == 0 {
                    return Err("empty block");
                }
                Ok(())
            }
            _ => {
                let has_origin = info & 0x80 != 0;
                let has_right = info & 0x40 != 0;
                if has_origin {
                    self.var()?;
                    self.var()?;
                }
                if has_right {
                    self.var()?;
                    self.var()?;
                }
                if !has_origin && !has_right {
                    if self.var()? == 1 {
                        self.buf()?;
                    } else {
                        self.var()?;
                        self.var()?;
                    }
                    if info & 0x20 != 0 {
                        self.buf()?;
                    }
                }
                self.content(info)
            }
        }
    }

    fn update(&mut self) -> Check<()> {
        for _ in 0..self.count(3)? {
            let blocks = self.count(1)?;
            self.var()?; // client
            self.var()?; // clock
            for _ in 0..blocks {
                self.block()?;
            }
        }
        // Delete set: clients, then (clock, len) ranges per client.
        for _ in 0..self.count(2)? {
            self.var()?;
            for _ in 0..self.count(2)? {
                let clock = self.var()?;
                let len = self.var()?;
                if clock
                    .checked_add(len)
                    .is_none_or(|end| end > u64::from(u32::MAX))
                {
                    return Err("delete range overflows");
                }
            }
        }
        Ok(())
    }
}

/// Checks the layout of a v1 update; `Err` carries the reason.
pub fn check_update(bytes: &[u8]) -> Result<(), &'static str> {
    Walker { bytes, at: 0 }.update()
}

/// Checks the layout of a v1 state vector.
pub fn check_state_vector(bytes: &[u8]) -> Result<(), &'static str> {
    let mut w = Walker { bytes, at: 0 };
    for _ in 0..w.count(2)? {
        w.var()?;
        w.var()?;
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
