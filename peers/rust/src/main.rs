use std::panic;

fn main() {
    // Panics are bugs; never print a backtrace. Decoder panics are caught and reported as
    // errors; anything else ends as one line, exit 1.
    panic::set_hook(Box::new(|_| {}));
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let status = match panic::catch_unwind(|| arrow_shm::cli::run(args)) {
        Ok(s) => s,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown".into());
            eprintln!("arrow-shm: ERR_INVALID_ARGUMENT: internal error: {}", msg.replace('\n', " "));
            1
        }
    };
    std::process::exit(status);
}
