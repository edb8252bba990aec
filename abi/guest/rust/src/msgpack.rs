//! msgpack, as much as the ABI's requests and replies need: a writer for str,
//! bin, uint, bool, arrays and maps, and a reader that walks any value.

/// Writes msgpack into a buffer, or only measures it (`Writer::measure`).
pub(crate) struct Writer<'b> {
    /// `None` while measuring.
    buf: Option<&'b mut [u8]>,
    len: usize,
}

impl<'b> Writer<'b> {
    /// A writer that only counts bytes.
    pub(crate) fn measure() -> Writer<'static> {
        Writer { buf: None, len: 0 }
    }

    /// A writer into `buf`, which must be at least as long as the measured size.
    pub(crate) fn new(buf: &'b mut [u8]) -> Writer<'b> {
        Writer { buf: Some(buf), len: 0 }
    }

    /// The bytes written (or counted) so far.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn put(&mut self, bytes: &[u8]) {
        if let Some(buf) = &mut self.buf {
            buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        }
        self.len += bytes.len();
    }

    /// The fix form (`fix_base | n`) when `n < fix_limit`, else the first of
    /// the 8-, 16- and 32-bit length forms that holds `n` (`tag8` may be absent).
    fn header(&mut self, fix_base: u8, fix_limit: usize, tag8: Option<u8>, tag16: u8, tag32: u8, n: usize) {
        match (n, tag8) {
            (n, _) if n < fix_limit => self.put(&[fix_base | n as u8]),
            (n, Some(tag8)) if n <= 0xff => self.put(&[tag8, n as u8]),
            (n, _) if n <= 0xffff => {
                self.put(&[tag16]);
                self.put(&(n as u16).to_be_bytes());
            }
            (n, _) => {
                self.put(&[tag32]);
                self.put(&(n as u32).to_be_bytes());
            }
        }
    }

    pub(crate) fn str(&mut self, s: &[u8]) {
        self.header(0xa0, 32, Some(0xd9), 0xda, 0xdb, s.len());
        self.put(s);
    }

    #[cfg(feature = "alloc")]
    pub(crate) fn bin(&mut self, b: &[u8]) {
        self.header(0, 0, Some(0xc4), 0xc5, 0xc6, b.len());
        self.put(b);
    }

    #[cfg(feature = "alloc")]
    pub(crate) fn array(&mut self, n: usize) {
        self.header(0x90, 16, None, 0xdc, 0xdd, n);
    }

    pub(crate) fn map(&mut self, n: usize) {
        self.header(0x80, 16, None, 0xde, 0xdf, n);
    }

    pub(crate) fn uint(&mut self, n: u16) {
        match n {
            0..=0x7f => self.put(&[n as u8]),
            0x80..=0xff => self.put(&[0xcc, n as u8]),
            _ => {
                self.put(&[0xcd]);
                self.put(&n.to_be_bytes());
            }
        }
    }

    pub(crate) fn bool(&mut self, b: bool) {
        self.put(&[if b { 0xc3 } else { 0xc2 }]);
    }
}

/// One value's header: scalars whole, str and bin with their bytes, arrays
/// and maps with their length (their items follow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Nil,
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(u32),
    Map(u32),
    /// Anything else: booleans, numbers, ext.
    Other,
}

/// Reads msgpack values one header at a time. Every method returns `None`
/// on malformed or truncated input.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[cfg(feature = "alloc")]
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// A reader over `bytes` starting at `pos` (as returned by `pos`).
    pub(crate) fn at(bytes: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { bytes, pos }
    }

    /// Where the next value starts.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(bytes)
    }

    /// A big-endian unsigned length of 1, 2 or 4 bytes.
    fn length(&mut self, size: usize) -> Option<u32> {
        Some(self.take(size)?.iter().fold(0, |n, &b| n << 8 | u32::from(b)))
    }

    pub(crate) fn next(&mut self) -> Option<Value<'a>> {
        let tag = self.take(1)?[0];
        let value = match tag {
            0x00..=0x7f | 0xe0..=0xff | 0xc2 | 0xc3 => Value::Other,
            0x80..=0x8f => Value::Map(u32::from(tag & 0x0f)),
            0x90..=0x9f => Value::Array(u32::from(tag & 0x0f)),
            0xa0..=0xbf => Value::Str(self.take(usize::from(tag & 0x1f))?),
            0xc0 => Value::Nil,
            0xc4..=0xc6 => {
                let n = self.length(1 << (tag - 0xc4))?;
                Value::Bin(self.take(n as usize)?)
            }
            0xc7..=0xc9 => {
                let n = self.length(1 << (tag - 0xc7))?;
                self.take(1 + n as usize)?; // ext: type byte, data
                Value::Other
            }
            0xca => self.take(4).map(|_| Value::Other)?,
            0xcb => self.take(8).map(|_| Value::Other)?,
            0xcc..=0xd3 => self.take(1 << ((tag - 0xcc) & 3)).map(|_| Value::Other)?,
            0xd4..=0xd8 => self.take(1 + (1 << (tag - 0xd4))).map(|_| Value::Other)?, // fixext
            0xd9..=0xdb => {
                let n = self.length(1 << (tag - 0xd9))?;
                Value::Str(self.take(n as usize)?)
            }
            0xdc => Value::Array(self.length(2)?),
            0xdd => Value::Array(self.length(4)?),
            0xde => Value::Map(self.length(2)?),
            0xdf => Value::Map(self.length(4)?),
            0xc1 => return None, // never used
        };
        Some(value)
    }

    /// Skips one whole value, nested arrays and maps included.
    pub(crate) fn skip(&mut self) -> Option<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.next()? {
                Value::Array(n) => pending += u64::from(n),
                Value::Map(n) => pending += 2 * u64::from(n),
                _ => {}
            }
        }
        Some(())
    }

    pub(crate) fn str(&mut self) -> Option<&'a [u8]> {
        match self.next()? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn array(&mut self) -> Option<u32> {
        match self.next()? {
            Value::Array(n) => Some(n),
            _ => None,
        }
    }
}
