//! Listings (`list_keys`) and scans (`scan`), page by page.
//!
//! A page lives in one buffer laid out as `[cursor][request][reply]`: the
//! previous page's cursor moved to the front, the msgpack request (scans
//! only), then the host's reply.

use core::ops::Range;

use crate::msgpack::{Reader, Value, Writer};
use crate::{addr, addr_mut, cap, check, host_bug, raw, Bucket, Error, Result};

/// Where listing pages are held: a fixed buffer (`&mut [u8]`, `[u8; N]`),
/// or with feature `alloc` a `Vec<u8>` that grows to fit any page.
pub trait PageBuf: AsRef<[u8]> + AsMut<[u8]> {
    /// Grows the buffer to at least `len` bytes if it can; whether it now
    /// holds `len` bytes. Fixed buffers cannot grow.
    fn make_room(&mut self, len: usize) -> bool {
        self.as_ref().len() >= len
    }
}

impl PageBuf for &mut [u8] {}

impl<const N: usize> PageBuf for [u8; N] {}

#[cfg(feature = "alloc")]
impl PageBuf for alloc::vec::Vec<u8> {
    fn make_room(&mut self, len: usize) -> bool {
        if self.len() < len {
            self.resize(len, 0);
        }
        true
    }
}

/// What a scan walks: built from [`ScanOptions::new`] (everything, 100 pairs
/// a page, ascending) with the methods below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct ScanOptions<'a> {
    prefix: &'a [u8],
    start: Option<&'a [u8]>,
    end: Option<&'a [u8]>,
    limit: u16,
    reverse: bool,
}

impl Default for ScanOptions<'_> {
    fn default() -> Self {
        ScanOptions::new()
    }
}

impl<'a> ScanOptions<'a> {
    /// Every key, 100 pairs a page, in ascending key order.
    pub const fn new() -> Self {
        ScanOptions { prefix: b"", start: None, end: None, limit: 100, reverse: false }
    }

    /// Only keys starting with `prefix`.
    pub fn prefix<P: AsRef<[u8]> + ?Sized>(mut self, prefix: &'a P) -> Self {
        self.prefix = prefix.as_ref();
        self
    }

    /// Only keys `>= start` (byte order).
    pub fn start<P: AsRef<[u8]> + ?Sized>(mut self, start: &'a P) -> Self {
        self.start = Some(start.as_ref());
        self
    }

    /// Only keys `< end`.
    pub fn end<P: AsRef<[u8]> + ?Sized>(mut self, end: &'a P) -> Self {
        self.end = Some(end.as_ref());
        self
    }

    /// Pairs a page, 1..=[`LIST_MAX_LIMIT`](crate::LIST_MAX_LIMIT) (a page also stops at 1 MiB).
    pub fn limit(mut self, limit: u16) -> Self {
        self.limit = limit;
        self
    }

    /// Descending key order.
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }

    fn write_request(&self, w: &mut Writer<'_>, cursor: Option<&[u8]>, limit: u16) {
        let optional = [self.start.is_some(), self.end.is_some(), cursor.is_some()];
        w.map(3 + optional.iter().filter(|&&present| present).count());
        w.str(b"prefix");
        w.str(self.prefix);
        for (name, value) in [(&b"start"[..], self.start), (b"end", self.end), (b"cursor", cursor)] {
            if let Some(value) = value {
                w.str(name);
                w.str(value);
            }
        }
        w.str(b"limit");
        w.uint(limit);
        w.str(b"reverse");
        w.bool(self.reverse);
    }
}

#[derive(Clone, Copy)]
enum Kind<'a> {
    Keys { prefix: &'a [u8] },
    Scan(ScanOptions<'a>),
}

/// A fetched page's items: where the first starts in the buffer, how many.
#[derive(Clone, Copy, Default)]
struct Items {
    pos: usize,
    count: u32,
}

struct Pager<'a, B> {
    bucket: Bucket,
    kind: Kind<'a>,
    /// Items a page; halved when a page does not fit a fixed buffer.
    limit: u16,
    buf: B,
    /// Length of the cursor at the start of `buf`; `None` before the first page.
    cursor: Option<usize>,
    /// Where the current page's cursor lies in `buf`, to be moved to the front.
    next_cursor: Option<Range<usize>>,
    /// The last page has been fetched.
    done: bool,
    /// The first guess at a reply's size: the last reply's.
    hint: usize,
}

impl<'a, B: PageBuf> Pager<'a, B> {
    fn new(bucket: Bucket, kind: Kind<'a>, limit: u16, buf: B) -> Self {
        let per_item = if let Kind::Scan(_) = kind { 64 } else { 32 };
        let hint = usize::from(limit) * per_item + 64;
        Pager { bucket, kind, limit, buf, cursor: None, next_cursor: None, done: false, hint }
    }

    fn request_len(&self, cursor: Option<&[u8]>) -> usize {
        match &self.kind {
            Kind::Keys { .. } => 0,
            Kind::Scan(options) => {
                let mut w = Writer::measure();
                options.write_request(&mut w, cursor, self.limit);
                w.len()
            }
        }
    }

    /// Fetches the next page: its items, or `None` after the last page. After
    /// an error, the next call asks for the same page again.
    fn fetch(&mut self) -> Result<Option<Items>> {
        if self.done {
            return Ok(None);
        }
        if let Some(range) = self.next_cursor.take() {
            self.cursor = Some(range.len());
            self.buf.as_mut().copy_within(range, 0);
        }
        let base = self.cursor.unwrap_or(0);
        let mut reply_len = self.hint;
        loop {
            let req_len = self.request_len(self.cursor.map(|len| &self.buf.as_ref()[..len]));
            let reply_at = base + req_len;
            self.buf.make_room(reply_at + reply_len);
            let buf = self.buf.as_mut();
            if buf.len() < reply_at {
                return Err(Error::ValueTooLarge);
            }
            let (head, tail) = buf.split_at_mut(base);
            let cursor = self.cursor.map(|_| &*head);
            let (req, out) = tail.split_at_mut(req_len);
            // SAFETY: every pointer comes from a live slice with its length, or is 0 with length 0.
            let rc = match &self.kind {
                Kind::Keys { prefix } => {
                    let cursor = cursor.unwrap_or_default();
                    let limit = i32::from(self.limit);
                    unsafe {
                        raw::list_keys(
                            self.bucket.handle(),
                            addr(prefix),
                            prefix.len(),
                            addr(cursor),
                            cursor.len(),
                            limit,
                            addr_mut(out),
                            cap(out),
                        )
                    }
                }
                Kind::Scan(options) => {
                    options.write_request(&mut Writer::new(req), cursor, self.limit);
                    unsafe { raw::scan(self.bucket.handle(), addr(req), req.len(), addr_mut(out), cap(out)) }
                }
            };
            reply_len = check(rc)? as usize;
            if reply_len <= out.len() {
                self.hint = reply_len;
                return Ok(Some(self.parse(reply_at, reply_len)));
            }
            if self.buf.make_room(reply_at + reply_len) {
                continue; // the retry may get a longer reply still: the store changes
            }
            if self.limit <= 1 {
                return Err(Error::ValueTooLarge);
            }
            self.limit /= 2;
        }
    }

    /// Checks the reply's shape (a malformed one is a host bug) and notes
    /// where its items and cursor are.
    fn parse(&mut self, at: usize, len: usize) -> Items {
        let kind = self.kind;
        let mut r = Reader::at(&self.buf.as_ref()[..at + len], at);
        let mut items = None;
        let mut cursor = None;
        let mut field = |r: &mut Reader<'_>| -> Option<()> {
            let name = r.str()?;
            if name == kind.items_field() {
                let count = r.array()?;
                items = Some(Items { pos: r.pos(), count });
                (0..count).try_for_each(|_| kind.check_item(r))
            } else if name == b"cursor" {
                cursor = Some(match r.next()? {
                    Value::Nil => None,
                    Value::Str(c) => Some(r.pos() - c.len()..r.pos()),
                    _ => return None,
                });
                Some(())
            } else {
                r.skip()
            }
        };
        let parsed = match r.next() {
            Some(Value::Map(fields)) => (0..fields).try_for_each(|_| field(&mut r)),
            _ => None,
        };
        match (parsed, items, cursor) {
            (Some(()), Some(items), Some(cursor)) => {
                self.done = cursor.is_none();
                self.next_cursor = cursor;
                items
            }
            _ => host_bug("wasmkv: malformed listing reply"),
        }
    }
}

impl Kind<'_> {
    /// The reply's field that holds the page's items.
    fn items_field(&self) -> &'static [u8] {
        match self {
            Kind::Keys { .. } => b"keys",
            Kind::Scan(_) => b"items",
        }
    }

    /// Checks the shape of one item: a str key, or a pair `[str, bin]`.
    fn check_item(&self, r: &mut Reader<'_>) -> Option<()> {
        match self {
            Kind::Keys { .. } => r.str().map(drop),
            Kind::Scan(_) => match (r.array()?, r.str()?, r.next()?) {
                (2, _, Value::Bin(_)) => Some(()),
                _ => None,
            },
        }
    }
}

fn key_str(key: Option<&[u8]>) -> &str {
    // Pager::parse checked the shape; keys are UTF-8 (the store's are).
    match key.map(core::str::from_utf8) {
        Some(Ok(key)) => key,
        _ => host_bug("wasmkv: malformed key in a listing reply"),
    }
}

fn pair<'p>(r: &mut Reader<'p>) -> (&'p str, &'p [u8]) {
    match (r.array(), key_str(r.str()), r.next()) {
        (Some(2), key, Some(Value::Bin(value))) => (key, value),
        _ => host_bug("wasmkv: malformed pair in a scan reply"),
    }
}

/// The pages of a listing ([`Bucket::list_keys_in`]).
#[must_use = "a listing does nothing until its pages are asked for"]
pub struct KeyPages<'a, B> {
    pager: Pager<'a, B>,
}

impl<'a, B: PageBuf> KeyPages<'a, B> {
    pub(crate) fn new(bucket: Bucket, prefix: &'a [u8], limit: u16, buf: B) -> Self {
        KeyPages { pager: Pager::new(bucket, Kind::Keys { prefix }, limit, buf) }
    }

    /// The next page, or `None` after the last. After an error, calling
    /// again asks for the same page.
    pub fn next_page(&mut self) -> Result<Option<KeyPage<'_>>> {
        let items = self.pager.fetch()?;
        Ok(items.map(|items| KeyPage { keys: Reader::at(self.pager.buf.as_ref(), items.pos), left: items.count }))
    }

    /// The buffer, for reuse.
    pub fn into_buf(self) -> B {
        self.pager.buf
    }
}

/// One page of keys, in order; each key is valid until the next page.
pub struct KeyPage<'p> {
    keys: Reader<'p>,
    left: u32,
}

impl<'p> Iterator for KeyPage<'p> {
    type Item = &'p str;

    fn next(&mut self) -> Option<&'p str> {
        self.left = self.left.checked_sub(1)?;
        Some(key_str(self.keys.str()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for KeyPage<'_> {}

/// The pages of a scan ([`Bucket::scan_in`]).
#[must_use = "a scan does nothing until its pages are asked for"]
pub struct ScanPages<'a, B> {
    pager: Pager<'a, B>,
}

impl<'a, B: PageBuf> ScanPages<'a, B> {
    pub(crate) fn new(bucket: Bucket, options: ScanOptions<'a>, buf: B) -> Self {
        ScanPages { pager: Pager::new(bucket, Kind::Scan(options), options.limit, buf) }
    }

    /// The next page, or `None` after the last. After an error, calling
    /// again asks for the same page.
    pub fn next_page(&mut self) -> Result<Option<ScanPage<'_>>> {
        let items = self.pager.fetch()?;
        Ok(items.map(|items| ScanPage { pairs: Reader::at(self.pager.buf.as_ref(), items.pos), left: items.count }))
    }

    /// The buffer, for reuse.
    pub fn into_buf(self) -> B {
        self.pager.buf
    }
}

/// One page of (key, value) pairs, in the scan's order; each is valid until
/// the next page.
pub struct ScanPage<'p> {
    pairs: Reader<'p>,
    left: u32,
}

impl<'p> Iterator for ScanPage<'p> {
    type Item = (&'p str, &'p [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        Some(pair(&mut self.pairs))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for ScanPage<'_> {}

#[cfg(feature = "alloc")]
mod iter {
    use alloc::string::String;
    use alloc::vec::Vec;

    use super::{key_str, pair, Items, Kind, Pager, Reader, ScanOptions};
    use crate::{Bucket, Result};

    /// A `Pager` that owns its buffer, walked item by item.
    struct Walk<'a> {
        pager: Pager<'a, Vec<u8>>,
        items: Items,
    }

    impl Walk<'_> {
        /// The next item, read by `read`; `None` at the end and after an error.
        fn next<T>(&mut self, read: impl FnOnce(&mut Reader<'_>) -> T) -> Option<Result<T>> {
            while self.items.count == 0 {
                match self.pager.fetch() {
                    Ok(items) => self.items = items?,
                    Err(err) => {
                        self.pager.done = true;
                        return Some(Err(err));
                    }
                }
            }
            let mut r = Reader::at(&self.pager.buf, self.items.pos);
            let item = read(&mut r);
            self.items = Items { pos: r.pos(), count: self.items.count - 1 };
            Some(Ok(item))
        }
    }

    /// The keys of a listing ([`Bucket::list_keys`]).
    #[must_use = "iterators are lazy and do nothing unless consumed"]
    pub struct Keys<'a>(Walk<'a>);

    impl<'a> Keys<'a> {
        pub(crate) fn new(bucket: Bucket, prefix: &'a [u8], limit: u16) -> Self {
            let pager = Pager::new(bucket, Kind::Keys { prefix }, limit, Vec::new());
            Keys(Walk { pager, items: Items::default() })
        }
    }

    impl Iterator for Keys<'_> {
        type Item = Result<String>;

        fn next(&mut self) -> Option<Result<String>> {
            self.0.next(|r| key_str(r.str()).into())
        }
    }

    /// The (key, value) pairs of a scan ([`Bucket::scan`]).
    #[must_use = "iterators are lazy and do nothing unless consumed"]
    pub struct Scan<'a>(Walk<'a>);

    impl<'a> Scan<'a> {
        pub(crate) fn new(bucket: Bucket, options: ScanOptions<'a>) -> Self {
            let pager = Pager::new(bucket, Kind::Scan(options), options.limit, Vec::new());
            Scan(Walk { pager, items: Items::default() })
        }
    }

    impl Iterator for Scan<'_> {
        type Item = Result<(String, Vec<u8>)>;

        fn next(&mut self) -> Option<Self::Item> {
            self.0.next(|r| {
                let (key, value) = pair(r);
                (key.into(), value.into())
            })
        }
    }
}

#[cfg(feature = "alloc")]
pub use iter::{Keys, Scan};
