//! rcounter: named counters in bucket "default", a `no_std` plugin without
//! an allocator: every buffer is on the stack. See plugins/rust/README.md.

#![no_std]

use wasmkv::{Bucket, ScanOptions, Status};

/// The input is longer than `INPUT_MAX` bytes.
const INPUT_TOO_LONG: Status = Status::plugin(2);
/// `read`: the value is longer than any i64 (the key holds something else).
const NOT_A_COUNTER: Status = Status::plugin(3);

const INPUT_MAX: usize = 1024;

/// The call's input, which must fit `buf`.
fn input(buf: &mut [u8; INPUT_MAX]) -> Result<&[u8], Status> {
    let len = wasmkv::input_into(buf);
    buf.get(..len).ok_or(INPUT_TOO_LONG)
}

/// Opens the bucket and reads the counter's name (the key): the input, or
/// `hits` when the input is empty.
fn begin(buf: &mut [u8; INPUT_MAX]) -> Result<(Bucket, &[u8]), Status> {
    let kv = Bucket::open("default")?;
    let name = input(buf)?;
    Ok((kv, if name.is_empty() { b"hits" } else { name }))
}

wasmkv::entry! {
    /// Adds 1 to the counter; outputs the new value.
    fn hit() -> Result<(), Status> {
        let mut buf = [0; INPUT_MAX];
        let (kv, name) = begin(&mut buf)?;
        let n = kv.increment(name, 1)?;
        wasmkv::output(wasmkv::format_i64(n, &mut [0; 20]))?;
        Ok(())
    }

    /// Outputs the counter's value as stored, or `0` if it is missing.
    fn read() -> Result<(), Status> {
        let mut buf = [0; INPUT_MAX];
        let (kv, name) = begin(&mut buf)?;
        let mut value = [0; 20];
        match kv.get_into(name, &mut value)? {
            None => wasmkv::output("0")?,
            Some(len) => wasmkv::output(value.get(..len).ok_or(NOT_A_COUNTER)?)?,
        }
        Ok(())
    }

    /// Deletes the counter; outputs `1` if it existed, else `0`.
    fn reset() -> Result<(), Status> {
        let mut buf = [0; INPUT_MAX];
        let (kv, name) = begin(&mut buf)?;
        wasmkv::output(if kv.delete(name)? { "1" } else { "0" })?;
        Ok(())
    }

    /// One line `<name> <value>\n` per counter whose name starts with the
    /// input, in byte order of the name: a scan, in a 1 KiB page buffer.
    fn list() -> Result<(), Status> {
        let kv = Bucket::open("default")?;
        let mut buf = [0; INPUT_MAX];
        let prefix = input(&mut buf)?;
        let mut pages = kv.scan_in(ScanOptions::new().prefix(prefix), [0; 1024]);
        while let Some(page) = pages.next_page()? {
            for (name, value) in page {
                for part in [name.as_bytes(), b" ", value, b"\n"] {
                    wasmkv::output(part)?;
                }
            }
        }
        Ok(())
    }

    /// One line `<name>\n` per counter whose name starts with the input, in
    /// byte order: a listing, 10 names a page.
    fn names() -> Result<(), Status> {
        let kv = Bucket::open("default")?;
        let mut buf = [0; INPUT_MAX];
        let prefix = input(&mut buf)?;
        let mut pages = kv.list_keys_in(prefix, 10, [0; 512]);
        while let Some(page) = pages.next_page()? {
            for name in page {
                wasmkv::output(name)?;
                wasmkv::output("\n")?;
            }
        }
        Ok(())
    }
}
