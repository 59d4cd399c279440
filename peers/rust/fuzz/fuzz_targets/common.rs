//! Shared by the targets that decode: the panic policy.
//!
//! libfuzzer-sys aborts on every panic, even one that is caught. `ipc::decode_stream` catches
//! panics of arrow-rs on hostile input and returns `ERR_IPC_INVALID` (defence in depth), so a
//! panic *located in an arrow-rs crate* is tolerated here: it is printed once per location (the
//! script reports these lines as findings) and unwinds to `decode_stream`. If nothing catches it
//! (a panic outside `decode_stream`), libfuzzer-sys still aborts. Any other panic (arrow_shm's own
//! code, the targets' assertions) aborts at once. `ARROW_SHM_FUZZ_STRICT=1` tolerates nothing.
use std::collections::HashSet;
use std::sync::{Mutex, Once};

pub fn tolerate_caught_arrow_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("ARROW_SHM_FUZZ_STRICT").is_some_and(|v| v != "0") {
            return;
        }
        let seen: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
        let previous = std::panic::take_hook(); // libfuzzer-sys's aborting hook
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or("");
            let crate_dir = file.rsplit("/.cargo/registry/src/").next().unwrap_or("");
            let in_arrow = file.contains("/.cargo/registry/src/")
                && crate_dir.split('/').nth(1).is_some_and(|c| c.starts_with("arrow-"));
            if !in_arrow {
                previous(info);
                return;
            }
            let loc = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            if seen.lock().map(|mut s| s.insert(loc.clone())).unwrap_or(false) {
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                eprintln!("arrow-shm-fuzz: tolerated arrow-rs panic at {loc}: {payload}");
                eprintln!("{}", std::backtrace::Backtrace::force_capture());
            }
        }));
    });
}
