//! wasmkv: the Rust SDK for wasmkv plugins. The contract is `abi/ABI.md`.
//!
//! ```ignore
//! #![no_std]
//! use wasmkv::{Bucket, Status};
//!
//! wasmkv::entry! {
//!     fn hit() -> Result<(), Status> {
//!         let n = Bucket::open("default")?.increment("hits", 1)?;
//!         wasmkv::output(wasmkv::format_i64(n, &mut [0; 20]))?;
//!         Ok(())
//!     }
//! }
//! ```
//!
//! Calls return [`Error`], one variant per negative status code. Variable-size
//! results follow the ABI's buffer rule: the `*_into` and `*_in` variants work
//! in the caller's buffer and never allocate; the allocating variants (feature
//! `alloc`) retry until the result fits.
//!
//! Features:
//! - `alloc`: the allocating API (`get`, `input`, the `list_keys` and `scan`
//!   iterators, batches). It needs a global allocator: build for `wasm32-wasi`
//!   or with `std`. (A `no_std` cdylib with `alloc` also needs an allocation
//!   error handler, which stable Rust provides only from 1.68.)
//! - `panic-handler`: a `#[panic_handler]` that traps, for `no_std` plugins.

#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "alloc")]
mod batch;
mod msgpack;
mod pages;
pub mod raw;

use core::fmt;

#[cfg(feature = "alloc")]
pub use pages::{Keys, Scan};
pub use pages::{KeyPage, KeyPages, PageBuf, ScanOptions, ScanPage, ScanPages};

/// One error per negative status code of the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Error {
    /// The key does not exist (or has expired). [`Bucket::get`] reports it as `None`.
    NotFound = -1,
    /// The key is empty, too long, not UTF-8, or contains a control character.
    InvalidKey = -2,
    /// The value exceeds the tenant's `max_value_bytes`, or a listing page
    /// holds a pair larger than the caller's buffer.
    ValueTooLarge = -3,
    /// The write would take the tenant past `max_keys` or `max_bytes`.
    QuotaExceeded = -4,
    /// `increment` on a value that is not a signed 64-bit decimal integer.
    NotANumber = -5,
    /// `increment` would leave the signed 64-bit range.
    IntegerOverflow = -6,
    /// `open` of a bucket not granted to this plugin.
    AccessDenied = -7,
    /// The store handle was not returned by `open`.
    BadHandle = -8,
    /// A pointer/length pair reaches outside the plugin's memory.
    BadPointer = -9,
    /// The tenant is over its `ops_per_second`.
    RateLimited = -10,
    /// The store's backend could not be reached in time.
    BackendUnavailable = -11,
    /// Anything else malformed: a bad TTL, limit, cursor, bucket name or request.
    InvalidArgument = -12,
}

impl Error {
    /// Every error, in code order (-1, -2, ...).
    pub const ALL: [Error; 12] = [
        Error::NotFound,
        Error::InvalidKey,
        Error::ValueTooLarge,
        Error::QuotaExceeded,
        Error::NotANumber,
        Error::IntegerOverflow,
        Error::AccessDenied,
        Error::BadHandle,
        Error::BadPointer,
        Error::RateLimited,
        Error::BackendUnavailable,
        Error::InvalidArgument,
    ];

    /// The status code, e.g. -4 for `QuotaExceeded`.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The error of a negative status code, `None` for any other number.
    pub const fn from_code(code: i32) -> Option<Error> {
        if code <= -1 && code >= -12 {
            Some(Error::ALL[(-1 - code) as usize])
        } else {
            None
        }
    }

    /// The ABI's name of the code, e.g. `QUOTA_EXCEEDED`.
    pub const fn name(self) -> &'static str {
        match self {
            Error::NotFound => "NOT_FOUND",
            Error::InvalidKey => "INVALID_KEY",
            Error::ValueTooLarge => "VALUE_TOO_LARGE",
            Error::QuotaExceeded => "QUOTA_EXCEEDED",
            Error::NotANumber => "NOT_A_NUMBER",
            Error::IntegerOverflow => "INTEGER_OVERFLOW",
            Error::AccessDenied => "ACCESS_DENIED",
            Error::BadHandle => "BAD_HANDLE",
            Error::BadPointer => "BAD_POINTER",
            Error::RateLimited => "RATE_LIMITED",
            Error::BackendUnavailable => "BACKEND_UNAVAILABLE",
            Error::InvalidArgument => "INVALID_ARGUMENT",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.name())
    }
}

/// The result of a call into the host.
pub type Result<T> = core::result::Result<T, Error>;

/// Largest `list_keys`/`scan` page (`wasmkv.abi.LIST_MAX_LIMIT`).
pub const LIST_MAX_LIMIT: u16 = 1000;
/// Most keys one batch request may carry (`wasmkv.abi.BATCH_MAX_ITEMS`).
pub const BATCH_MAX_ITEMS: usize = 1000;

/// A host bug (the ABI promises well-formed replies and known codes): trap.
#[cold]
fn host_bug(what: &'static str) -> ! {
    panic!("{}", what)
}

/// An import's result: the non-negative value, or the error of its code.
fn check(rc: i32) -> Result<u32> {
    if rc >= 0 {
        Ok(rc as u32)
    } else {
        match Error::from_code(rc) {
            Some(err) => Err(err),
            None => host_bug("wasmkv: the host returned an unknown status code"),
        }
    }
}

/// A slice's address for the host: 0 for an empty slice, whose pointer may
/// lie anywhere (the ABI never checks the pointer of an empty range; the Zig
/// and C SDKs pass 0 too).
fn addr(s: &[u8]) -> *const u8 {
    if s.is_empty() {
        core::ptr::null()
    } else {
        s.as_ptr()
    }
}

fn addr_mut(s: &mut [u8]) -> *mut u8 {
    if s.is_empty() {
        core::ptr::null_mut()
    } else {
        s.as_mut_ptr()
    }
}

/// A buffer's capacity for the host (at most `i32::MAX`).
fn cap(buf: &[u8]) -> i32 {
    i32::try_from(buf.len()).unwrap_or(i32::MAX)
}

/// The failure status of an entry point: a kv error's negative code, or a
/// positive status of the plugin's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(i32);

impl Status {
    /// A plugin status; `code` must be positive (it panics otherwise).
    pub const fn plugin(code: i32) -> Status {
        assert!(code > 0, "a plugin status is positive");
        Status(code)
    }

    /// The number the entry point returns.
    pub const fn code(self) -> i32 {
        self.0
    }

    /// The kv error, if this status is one.
    pub const fn kv_error(self) -> Option<Error> {
        Error::from_code(self.0)
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        Status(err.code())
    }
}

/// What an entry point's body may return: `()`, or a `Result<(), E>` whose
/// error converts into a [`Status`] (such as [`Error`] or `Status` itself).
pub trait Outcome {
    /// 0 for success, else the status.
    fn code(self) -> i32;
}

impl Outcome for () {
    fn code(self) -> i32 {
        0
    }
}

impl<E: Into<Status>> Outcome for core::result::Result<(), E> {
    fn code(self) -> i32 {
        match self {
            Ok(()) => 0,
            Err(err) => err.into().code(),
        }
    }
}

/// Defines entry points: each `fn name() -> R { ... }`, where `R` is an
/// [`Outcome`], becomes an export `name` of type `() -> i32`.
///
/// ```ignore
/// const MALFORMED: wasmkv::Status = wasmkv::Status::plugin(2);
///
/// wasmkv::entry! {
///     /// Doc comments and attributes are kept.
///     fn reset() -> Result<(), wasmkv::Status> {
///         let name = wasmkv::input();
///         if name.is_empty() {
///             return Err(MALFORMED);
///         }
///         wasmkv::Bucket::open("default")?.delete(&name)?;
///         Ok(())
///     }
/// }
/// ```
///
/// The export's name is also its symbol: on `wasm32-wasi`, where libc is
/// linked, do not name an entry point like a libc function (`read`, `write`, ...).
#[macro_export]
macro_rules! entry {
    ($($(#[$attr:meta])* fn $name:ident() $(-> $ret:ty)? $body:block)*) => {
        $(
            $(#[$attr])*
            #[no_mangle]
            pub extern "C" fn $name() -> i32 {
                fn __wasmkv_entry() $(-> $ret)? $body
                $crate::Outcome::code(__wasmkv_entry())
            }
        )*
    };
}

/// A bucket of the plugin's tenant, opened with [`Bucket::open`].
///
/// Keys are anything that is `AsRef<[u8]>` (`&str`, `String`, `&[u8]`,
/// `Vec<u8>`, `b"..."`); the store wants UTF-8 without control characters
/// ([`Error::InvalidKey`] otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bucket(i32);

impl Bucket {
    /// Opens a bucket granted to this plugin (1-64 chars of `[A-Za-z0-9_-]`).
    pub fn open(name: &str) -> Result<Bucket> {
        // SAFETY (for every import call below): the pointers come from live
        // slices with the lengths passed, or are 0 with length 0.
        let handle = check(unsafe { raw::open(addr(name.as_bytes()), name.len()) })?;
        Ok(Bucket(handle as i32))
    }

    /// The handle the host returned, for the [`raw`] imports.
    pub const fn handle(self) -> i32 {
        self.0
    }

    /// The value's full length, or `None` if the key is missing. The value
    /// is written to `buf` only if it fits (`length <= buf.len()`); otherwise
    /// `buf` is untouched and a retry needs a buffer of at least that length.
    pub fn get_into(&self, key: impl AsRef<[u8]>, buf: &mut [u8]) -> Result<Option<usize>> {
        let key = key.as_ref();
        match unsafe { raw::get(self.0, addr(key), key.len(), addr_mut(buf), cap(buf)) } {
            -1 => Ok(None),
            rc => check(rc).map(|len| Some(len as usize)),
        }
    }

    /// The value, or `None` if the key is missing.
    #[cfg(feature = "alloc")]
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<alloc::vec::Vec<u8>>> {
        let key = key.as_ref();
        batch::fetch(batch::DEFAULT_HINT, |buf| self.get_into(key, buf))
    }

    /// Sets the key's value (and clears its TTL).
    pub fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        check(unsafe { raw::set(self.0, addr(key), key.len(), addr(value), value.len()) })?;
        Ok(())
    }

    /// Sets the key's value to expire after `ttl_ms` milliseconds
    /// (`1..=3_153_600_000_000`, else [`Error::InvalidArgument`]).
    pub fn set_with_ttl(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, ttl_ms: u64) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let ttl_ms = i64::try_from(ttl_ms).map_err(|_| Error::InvalidArgument)?;
        check(unsafe { raw::set_with_ttl(self.0, addr(key), key.len(), addr(value), value.len(), ttl_ms) })?;
        Ok(())
    }

    /// Deletes the key; whether it existed.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        Ok(check(unsafe { raw::delete(self.0, addr(key), key.len()) })? == 1)
    }

    /// Whether the key exists.
    pub fn exists(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        Ok(check(unsafe { raw::exists(self.0, addr(key), key.len()) })? == 1)
    }

    /// Adds `delta` to the key's decimal value (a missing key counts as 0,
    /// the TTL is kept) and returns the new value.
    pub fn increment(&self, key: impl AsRef<[u8]>, delta: i64) -> Result<i64> {
        let key = key.as_ref();
        let mut value = 0;
        check(unsafe { raw::increment(self.0, addr(key), key.len(), delta, &mut value) })?;
        Ok(value)
    }

    /// Sets the key to `new` if its value is `expected` (`None`: if it is
    /// absent); whether it swapped. A swap clears the TTL, as `set` does.
    pub fn compare_and_swap(&self, key: impl AsRef<[u8]>, expected: Option<&[u8]>, new: impl AsRef<[u8]>) -> Result<bool> {
        let (key, new) = (key.as_ref(), new.as_ref());
        let (exp_ptr, exp_len) = match expected {
            Some(e) => (addr(e), i32::try_from(e.len()).map_err(|_| Error::BadPointer)?),
            None => (core::ptr::null(), -1),
        };
        let rc = unsafe { raw::compare_and_swap(self.0, addr(key), key.len(), exp_ptr, exp_len, addr(new), new.len()) };
        Ok(check(rc)? == 1)
    }

    /// Pages of the keys starting with `prefix`, in byte order, up to `limit`
    /// (1..=[`LIST_MAX_LIMIT`]) keys a page, each page held in `buf`. Nothing
    /// is allocated: a page that does not fit is asked for again with half the
    /// limit, down to 1 key ([`Error::ValueTooLarge`] if even that does not fit).
    pub fn list_keys_in<'a, P, B>(&self, prefix: &'a P, limit: u16, buf: B) -> KeyPages<'a, B>
    where
        P: AsRef<[u8]> + ?Sized,
        B: PageBuf,
    {
        KeyPages::new(*self, prefix.as_ref(), limit, buf)
    }

    /// Pages of (key, value) pairs, as [`list_keys_in`](Self::list_keys_in)
    /// pages keys; each page is read from one snapshot of the store.
    pub fn scan_in<'a, B: PageBuf>(&self, options: ScanOptions<'a>, buf: B) -> ScanPages<'a, B> {
        ScanPages::new(*self, options, buf)
    }

    /// The keys starting with `prefix`, in byte order, fetched `limit`
    /// (1..=[`LIST_MAX_LIMIT`]) at a time. The iteration ends after an error.
    #[cfg(feature = "alloc")]
    pub fn list_keys<'a, P: AsRef<[u8]> + ?Sized>(&self, prefix: &'a P, limit: u16) -> Keys<'a> {
        Keys::new(*self, prefix.as_ref(), limit)
    }

    /// The (key, value) pairs `options` selects, a page (one snapshot of the
    /// store) at a time. The iteration ends after an error.
    #[cfg(feature = "alloc")]
    pub fn scan<'a>(&self, options: ScanOptions<'a>) -> Scan<'a> {
        Scan::new(*self, options)
    }
}

/// The call's input length. The input is written to `buf` only if it fits.
pub fn input_into(buf: &mut [u8]) -> usize {
    let len = check(unsafe { raw::input(addr_mut(buf), cap(buf)) });
    len.unwrap_or_else(|_| host_bug("wasmkv: input failed")) as usize
}

/// The call's input.
#[cfg(feature = "alloc")]
pub fn input() -> alloc::vec::Vec<u8> {
    let input = batch::fetch(batch::DEFAULT_HINT, |buf| Ok(Some(input_into(buf))));
    input.ok().flatten().unwrap_or_default()
}

/// Appends to the call's output. Fails with [`Error::InvalidArgument`] once
/// the call's output would pass the plugin's memory limit.
pub fn output(bytes: impl AsRef<[u8]>) -> Result<()> {
    let bytes = bytes.as_ref();
    check(unsafe { raw::output(addr(bytes), bytes.len()) })?;
    Ok(())
}

/// Levels of [`log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum LogLevel {
    /// Level 0.
    Debug = 0,
    /// Level 1.
    Info = 1,
    /// Level 2.
    Warning = 2,
    /// Level 3.
    Error = 3,
}

/// Writes a line to the plugin's log.
pub fn log(level: LogLevel, text: &str) {
    unsafe { raw::log(level as i32, addr(text.as_bytes()), text.len()) }
}

/// Formats `n` in decimal into `buf` (20 bytes hold any `i64`); the digits.
pub fn format_i64(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut rest = n.unsigned_abs();
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        start -= 1;
        buf[start] = b'-';
    }
    &buf[start..]
}

#[cfg(all(feature = "panic-handler", target_arch = "wasm32"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}
