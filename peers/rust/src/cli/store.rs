//! The table store commands (docs/CLI.md, Table store): put, get, ls, rm, with the TypeScript
//! CLI's flags and output (src/cli/store.ts). This peer has no store server: run
//! `arrow-shm store --socket PATH` (Node) for that.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::channel::Options;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{open_store, PutData, PutOptions, StoreClient, StoreOptions};

use super::output::{print_summary, Output};
use super::{load, report, usage, Args, CliResult, Payload};

fn open(a: &Args) -> CliResult<StoreClient> {
    let options = Options { timeout: a.timeout(), ..Options::default() };
    Ok(open_store(&a.store()?, StoreOptions { options, ..StoreOptions::default() })?)
}

fn out(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes()).and_then(|_| o.flush()).map_err(|e| Error::from_io("write", &e))
}

/// 12s, 5m, 3h, 2d: as the TypeScript CLI rounds them (`Math.round`: halves up).
pub fn age(created_ms: i64, now_ms: i64) -> String {
    let round = |x: f64| (x + 0.5).floor() as i64;
    let s = round((now_ms - created_ms) as f64 / 1000.0).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", round(s as f64 / 60.0)),
        7200..172_800 => format!("{}h", round(s as f64 / 3600.0)),
        _ => format!("{}d", round(s as f64 / 86400.0)),
    }
}

/// `put --store ADDR NAME FILE [--meta k=v]... [--replace]`: prints name, version, bytes, rows.
pub fn cmd_put(a: Args) -> CliResult<i32> {
    let (name, file) = (&a.files[0], &a.files[1]);
    // Checked before connecting: a bad FILE fails without touching the store.
    if file != "-" && !std::path::Path::new(file).is_file() {
        return usage(format!("no such file: {file}"));
    }
    let payload = load(file)?;
    let data = match &payload {
        Payload::Stream(bytes) => PutData::Ipc(bytes),
        Payload::Batches(schema, batches) => PutData::Batches(schema, batches),
    };
    let store = open(&a)?;
    let put = store.put(name, data, &PutOptions { metadata: a.meta.clone(), replace: a.replace })?;
    store.close();
    out(&format!("{name}\tversion {}\t{} bytes\t{} rows\n", put.version, put.bytes, put.rows))?;
    Ok(0)
}

/// `get --store ADDR NAME [--out FILE] [--print] [--timeout-ms N]`.
pub fn cmd_get(a: Args) -> CliResult<i32> {
    let output = Output::new(a.out.as_deref(), 1)?; // checked before connecting
    let store = open(&a)?;
    let message = store.get(&a.files[0], a.timeout())?;
    output.write(&message, 0)?;
    let mut status = 0;
    if a.print || a.out.is_none() {
        if let Some(e) = print_summary(&message, 0) {
            report(&e);
            if e.code != ErrorCode::IpcUnsupported {
                status = 1;
            }
        }
    }
    drop(message); // RELEASE, before the GOODBYE
    store.close();
    Ok(status)
}

/// `ls --store ADDR [--prefix X]`: one line per name: name, bytes, rows, age.
pub fn cmd_ls(a: Args) -> CliResult<i32> {
    let store = open(&a)?;
    let entries = store.list(a.prefix.as_deref().unwrap_or(""))?;
    store.close();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let lines: String = entries.iter().map(|e| format!("{}\t{}\t{}\t{}\n", e.name, e.bytes, e.rows, age(e.created_ms, now))).collect();
    out(&lines)?;
    Ok(0)
}

/// `rm --store ADDR NAME`.
pub fn cmd_rm(a: Args) -> CliResult<i32> {
    let store = open(&a)?;
    store.delete(&a.files[0])?;
    store.close();
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_round_like_the_typescript_cli() {
        assert_eq!(age(0, 1_499), "1s");
        assert_eq!(age(0, 1_500), "2s");
        assert_eq!(age(5_000, 0), "0s");
        assert_eq!(age(0, 119_000), "119s");
        assert_eq!(age(0, 150_000), "3m"); // 2.5 rounds up
        assert_eq!(age(0, 7_200_000), "2h");
        assert_eq!(age(0, 172_800_000), "2d");
    }
}
