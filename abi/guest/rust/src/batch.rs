//! The allocating API: the buffer rule's retry loop, and batches.

use alloc::vec;
use alloc::vec::Vec;

use crate::msgpack::{Reader, Value, Writer};
use crate::{addr, addr_mut, cap, check, host_bug, raw, Bucket, Result};

/// First buffer size for values, inputs and batch replies.
pub(crate) const DEFAULT_HINT: usize = 256;

/// Runs `fill`, one call of a buffer-rule import (`None`: there is no
/// result), until the result fits: first into `hint` bytes, then into the
/// length the previous call reported (the data may change between calls).
pub(crate) fn fetch(hint: usize, mut fill: impl FnMut(&mut [u8]) -> Result<Option<usize>>) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0; hint];
    loop {
        match fill(&mut buf)? {
            None => return Ok(None),
            Some(len) if len <= buf.len() => {
                buf.truncate(len);
                return Ok(Some(buf));
            }
            Some(len) => buf.resize(len, 0),
        }
    }
}

/// A request of exactly its size (a first pass measures it).
fn encode(write: impl Fn(&mut Writer<'_>)) -> Vec<u8> {
    let mut measure = Writer::measure();
    write(&mut measure);
    let mut req = vec![0; measure.len()];
    write(&mut Writer::new(&mut req));
    req
}

fn write_keys<K: AsRef<[u8]>>(w: &mut Writer<'_>, keys: &[K]) {
    w.array(keys.len());
    for key in keys {
        w.str(key.as_ref());
    }
}

impl Bucket {
    /// The values of `keys` (at most [`BATCH_MAX_ITEMS`](crate::BATCH_MAX_ITEMS)),
    /// in order, `None` where a key is missing.
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        let req = encode(|w| write_keys(w, keys));
        let reply = fetch(DEFAULT_HINT, |out| {
            // SAFETY: the pointers come from live slices with their lengths, or are 0 with length 0.
            let rc = unsafe { raw::get_many(self.handle(), addr(&req), req.len(), addr_mut(out), cap(out)) };
            check(rc).map(|len| Some(len as usize))
        })?
        .unwrap_or_default();
        let mut r = Reader::new(&reply);
        if r.array() != Some(keys.len() as u32) {
            host_bug("wasmkv: malformed get_many reply");
        }
        let values = keys.iter().map(|_| match r.next() {
            Some(Value::Bin(value)) => Some(value.to_vec()),
            Some(Value::Nil) => None,
            _ => host_bug("wasmkv: malformed get_many reply"),
        });
        Ok(values.collect())
    }

    /// Sets every (key, value) pair (at most [`BATCH_MAX_ITEMS`](crate::BATCH_MAX_ITEMS)),
    /// all or nothing.
    pub fn set_many<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, entries: &[(K, V)]) -> Result<()> {
        let req = encode(|w| {
            w.map(entries.len());
            for (key, value) in entries {
                w.str(key.as_ref());
                w.bin(value.as_ref());
            }
        });
        // SAFETY: the pointer comes from a live slice with its length, or is 0 with length 0.
        check(unsafe { raw::set_many(self.handle(), addr(&req), req.len(), core::ptr::null_mut(), 0) })?;
        Ok(())
    }

    /// Deletes `keys` (at most [`BATCH_MAX_ITEMS`](crate::BATCH_MAX_ITEMS));
    /// how many of them existed.
    pub fn delete_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<u32> {
        let req = encode(|w| write_keys(w, keys));
        // SAFETY: the pointer comes from a live slice with its length, or is 0 with length 0.
        check(unsafe { raw::delete_many(self.handle(), addr(&req), req.len(), core::ptr::null_mut(), 0) })
    }
}
