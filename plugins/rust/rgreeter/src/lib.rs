//! rgreeter: greetings counted per name in bucket "default", a `std` plugin
//! for `wasm32-wasi` (load it with `wasi=True`): its `println!` and
//! `eprintln!` lines go to the plugin's log. See plugins/rust/README.md.

use std::fmt::Write;

use wasmkv::{Bucket, LogLevel, ScanOptions, Status};

/// Malformed input.
const MALFORMED: Status = Status::plugin(2);

/// Where the greetings of `<name>` are counted: `greeted:<name>`.
const GREETED: &str = "greeted:";
/// The word `greet` says.
const GREETING: &str = "greeting";
/// Names a listing or scan page.
const PAGE: u16 = 10;

fn bucket() -> wasmkv::Result<Bucket> {
    Bucket::open("default")
}

/// The call's input, as text.
fn input() -> Result<String, Status> {
    String::from_utf8(wasmkv::input()).map_err(|_| MALFORMED)
}

/// A name: not empty, no space.
fn name(text: &str) -> Result<&str, Status> {
    if text.is_empty() || text.contains(' ') {
        Err(MALFORMED)
    } else {
        Ok(text)
    }
}

/// The names in `text`, separated by spaces.
fn names(text: &str) -> impl Iterator<Item = &str> {
    text.split(' ').filter(|name| !name.is_empty())
}

fn ordinal_suffix(n: i64) -> &'static str {
    match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

wasmkv::entry! {
    /// Input: a name. Counts the greeting under `greeted:<name>`, prints a
    /// line, and outputs `<greeting> <name> #<n>` (`hello` unless `greeting`
    /// chose another word); a snoozed name is not counted and gets `zzz <name>`.
    fn greet() -> Result<(), Status> {
        let text = input()?;
        let name = name(&text)?;
        let kv = bucket()?;
        if kv.exists(format!("snooze:{name}"))? {
            eprintln!("{name} is snoozed");
            wasmkv::output(format!("zzz {name}"))?;
            return Ok(());
        }
        let n = kv.increment(format!("{GREETED}{name}"), 1)?;
        println!("greeting {name} for the {n}{} time", ordinal_suffix(n));
        let greeting = kv.get(GREETING)?.unwrap_or_else(|| b"hello".to_vec());
        wasmkv::output(greeting)?;
        wasmkv::output(format!(" {name} #{n}"))?;
        Ok(())
    }

    /// Input: a word, without spaces. `greet` says it from now on.
    fn greeting() -> Result<(), Status> {
        let text = input()?;
        bucket()?.set(GREETING, name(&text)?)?;
        Ok(())
    }

    /// Input: `<name> <ms>`. Snoozes the name for `ms` milliseconds
    /// (`snooze:<name>`, with that TTL).
    fn snooze() -> Result<(), Status> {
        let text = input()?;
        let (who, ms) = text.split_once(' ').ok_or(MALFORMED)?;
        let ms: u64 = ms.parse().map_err(|_| MALFORMED)?;
        bucket()?.set_with_ttl(format!("snooze:{}", name(who)?), ms.to_string(), ms)?;
        Ok(())
    }

    /// Outputs one line `<name> <n>\n` per greeted name, in byte order of
    /// the name: a scan.
    fn greeted() -> Result<(), Status> {
        let mut out = String::new();
        for pair in bucket()?.scan(ScanOptions::new().prefix(GREETED).limit(PAGE)) {
            let (key, count) = pair?;
            let count = String::from_utf8_lossy(&count);
            writeln!(out, "{} {count}", &key[GREETED.len()..]).expect("a String takes any text");
        }
        wasmkv::output(out)?;
        Ok(())
    }

    /// Input: names separated by spaces. Outputs one line `<name> <n>\n` per
    /// name, in input order, `0` for a name never greeted: one `get_many`.
    fn counts() -> Result<(), Status> {
        let text = input()?;
        let names: Vec<&str> = names(&text).collect();
        let keys: Vec<String> = names.iter().map(|name| format!("{GREETED}{name}")).collect();
        let mut out = String::new();
        for (name, count) in names.iter().zip(bucket()?.get_many(&keys)?) {
            let count = count.map_or("0".into(), |count| String::from_utf8_lossy(&count).into_owned());
            writeln!(out, "{name} {count}").expect("a String takes any text");
        }
        wasmkv::output(out)?;
        Ok(())
    }

    /// Input: lines `<name> <n>`. Sets all those counts or, if any fails,
    /// none: one `set_many`. Outputs nothing; logs how many it set.
    fn import() -> Result<(), Status> {
        let text = input()?;
        let mut entries = Vec::new();
        for line in text.lines() {
            let (who, count) = line.split_once(' ').ok_or(MALFORMED)?;
            let count: i64 = count.parse().map_err(|_| MALFORMED)?;
            entries.push((format!("{GREETED}{}", name(who)?), count.to_string()));
        }
        bucket()?.set_many(&entries)?;
        wasmkv::log(LogLevel::Info, &format!("imported {} names", entries.len()));
        Ok(())
    }

    /// Input: names separated by spaces, or nothing for every greeted name
    /// (a listing). Deletes their counts with `delete_many`; outputs how
    /// many had been greeted.
    fn forget() -> Result<(), Status> {
        let text = input()?;
        let kv = bucket()?;
        let keys: Vec<String> = if text.is_empty() {
            kv.list_keys(GREETED, PAGE).collect::<wasmkv::Result<_>>()?
        } else {
            names(&text).map(|name| format!("{GREETED}{name}")).collect()
        };
        let mut forgotten = 0;
        for batch in keys.chunks(wasmkv::BATCH_MAX_ITEMS) {
            forgotten += kv.delete_many(batch)?;
        }
        eprintln!("forgot {forgotten} of {} names", keys.len());
        wasmkv::output(forgotten.to_string())?;
        Ok(())
    }

    /// Input: `<new>` to crown a name while nobody has the crown, or
    /// `<holder> <new>` to hand it over. Outputs `1` if the crown moved,
    /// else `0`: a `compare_and_swap` of the key `crown`.
    fn crown() -> Result<(), Status> {
        let text = input()?;
        let (holder, new) = match text.split_once(' ') {
            Some((holder, new)) => (Some(name(holder)?), name(new)?),
            None => (None, name(&text)?),
        };
        let moved = bucket()?.compare_and_swap("crown", holder.map(str::as_bytes), new)?;
        if moved {
            wasmkv::log(LogLevel::Info, &format!("{new} has the crown"));
        }
        wasmkv::output(if moved { "1" } else { "0" })?;
        Ok(())
    }
}
