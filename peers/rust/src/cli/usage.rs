//! The one table of commands and flags: the parser, `--help` and the usage line all read it.

use std::fmt::Write as _;

use crate::frame::KeyValues;

use super::{usage, CliError, CliResult};

/// A flag, defined once: its value placeholder (`None`: a switch) and its usual help line.
struct Flag {
    name: &'static str,
    value: Option<&'static str>,
    help: &'static str,
}

const FLAGS: &[Flag] = &[
    Flag { name: "socket", value: Some("addr"), help: "socket path, or @name for an abstract socket" },
    Flag { name: "listen", value: None, help: "listen for the receiver instead of connecting" },
    Flag { name: "connect", value: None, help: "connect to the sender instead of listening" },
    Flag { name: "seed-compat", value: None, help: "speak the seed proof of concept's protocol" },
    Flag { name: "meta", value: Some("key=value"), help: "user metadata (repeatable)" },
    Flag { name: "count", value: Some("n"), help: "number of tables to receive (default: 1)" },
    Flag { name: "out", value: Some("path"), help: "write to PATH" },
    Flag { name: "print", value: None, help: "print a summary" },
    Flag { name: "allow-unsealed", value: None, help: "accept segments without seals (unsafe with untrusted senders)" },
    Flag { name: "timeout-ms", value: Some("n"), help: "give up after N ms" },
    Flag { name: "stream", value: None, help: "one stream through a shared ring" },
    Flag { name: "ring-bytes", value: Some("n"), help: "ring capacity (a power of two)" },
    Flag { name: "subscribers", value: Some("n"), help: "subscribers to wait for (default: 1)" },
    Flag { name: "store", value: Some("addr"), help: "the store's socket path or @name" },
    Flag { name: "replace", value: None, help: "make a new version if NAME exists" },
    Flag { name: "prefix", value: Some("prefix"), help: "only names starting with PREFIX" },
    Flag {
        name: "max-inline-bytes",
        value: Some("n"),
        help: "send IPC streams up to N bytes inside the TABLE frame when they fit (default: 65536; 0: never)",
    },
];

/// The operands a command takes after its flags.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Operands {
    None,
    /// One or more FILEs.
    Files,
    /// A store's NAME.
    Name,
    /// A store's NAME, then a FILE.
    NameFile,
}

/// A command: what it does and the flags it takes, in help order, each with its help line
/// for this command ("": the flag's usual one).
pub struct Command {
    pub name: &'static str,
    operands: Operands,
    about: &'static str,
    flags: &'static [(&'static str, &'static str)],
}

pub const COMMANDS: &[Command] = &[
    Command {
        name: "send",
        operands: Operands::Files,
        about: "send each FILE (Arrow IPC stream or file, - for stdin) as one table",
        flags: &[
            ("socket", ""),
            ("listen", ""),
            ("seed-compat", "speak the seed proof of concept's protocol (listen, send 'F' + unsealed memfd)"),
            ("meta", "user metadata for every message (repeatable)"),
            ("timeout-ms", ""),
            ("stream", "send every batch of the FILEs as one stream through a shared ring"),
            ("ring-bytes", "ring capacity for --stream (a power of two)"),
            ("max-inline-bytes", ""),
        ],
    },
    Command {
        name: "recv",
        operands: Operands::None,
        about: "receive tables; write them as IPC stream files and/or print a summary",
        flags: &[
            ("socket", ""),
            ("connect", ""),
            ("count", ""),
            ("out", "FILE for one table, or DIR for DIR/000000.arrows, ..."),
            ("print", "print schema, rows, metadata and the first rows"),
            ("seed-compat", "speak the seed proof of concept's protocol (connect, accept an unsealed memfd)"),
            ("allow-unsealed", ""),
            ("timeout-ms", ""),
            ("stream", "receive one stream; --out writes it as one IPC stream file"),
        ],
    },
    Command {
        name: "pub",
        operands: Operands::Files,
        about: "publish every batch of the FILEs once N subscribers have joined",
        flags: &[
            ("socket", ""),
            ("subscribers", ""),
            ("meta", "user metadata for the stream (repeatable)"),
            ("ring-bytes", ""),
            ("timeout-ms", ""),
        ],
    },
    Command {
        name: "sub",
        operands: Operands::None,
        about: "subscribe to a publication and write what it publishes as one IPC stream file",
        flags: &[("socket", ""), ("out", "write the stream to PATH"), ("print", "print schema and row counts"), ("timeout-ms", "")],
    },
    Command {
        name: "engine",
        operands: Operands::None,
        about: "answer symbol-table requests (flag REQUEST) with per-file_id and per-kind summaries",
        flags: &[
            ("socket", ""),
            ("count", "stop after N requests (default: serve until killed)"),
            ("timeout-ms", "accepted for symmetry; requests have no timeout"),
        ],
    },
    // The table store's commands (cli/store.rs), as src/cli/store.ts defines them.
    Command {
        name: "put",
        operands: Operands::NameFile,
        about: "put FILE (Arrow IPC stream or file, - for stdin) into a store under NAME",
        flags: &[("store", ""), ("meta", ""), ("replace", ""), ("timeout-ms", "give up connecting after N ms")],
    },
    Command {
        name: "get",
        operands: Operands::Name,
        about: "get NAME from a store; write it as an IPC stream file and/or print a summary",
        flags: &[
            ("store", ""),
            ("out", "write the table to FILE"),
            ("print", "print schema, rows, metadata and the first rows"),
            ("timeout-ms", "wait up to N ms for NAME to be put"),
        ],
    },
    Command {
        name: "ls",
        operands: Operands::None,
        about: "list a store: one line per name (name, bytes, rows, age)",
        flags: &[("store", ""), ("prefix", ""), ("timeout-ms", "give up connecting after N ms")],
    },
    Command {
        name: "rm",
        operands: Operands::Name,
        about: "delete NAME from a store (readers keep what they have)",
        flags: &[("store", ""), ("timeout-ms", "give up connecting after N ms")],
    },
];

pub fn command(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

fn flag(name: &str) -> &'static Flag {
    FLAGS.iter().find(|f| f.name == name).expect("every flag of COMMANDS is in FLAGS")
}

/// The `--help` output: commander's layout (terms padded to the longest, two spaces).
fn help_text(heading: &str, about: &str, sections: &[(&str, Vec<(String, &str)>)]) -> String {
    let width = sections.iter().flat_map(|(_, rows)| rows.iter().map(|(t, _)| t.len())).max().unwrap_or(0);
    let mut s = format!("Usage: arrow-shm-rs {heading}\n\n{about}\n");
    for (title, rows) in sections {
        let _ = write!(s, "\n{title}:\n");
        for (term, help) in rows {
            let _ = writeln!(s, "  {term:width$}  {help}");
        }
    }
    s
}

fn operands(c: &Command) -> &'static str {
    match c.operands {
        Operands::None => "",
        Operands::Files => " <files...>",
        Operands::Name => " <name>",
        Operands::NameFile => " <name> <file>",
    }
}

pub fn program_help() -> String {
    let commands = COMMANDS.iter().map(|c| (format!("{} [options]{}", c.name, operands(c)), c.about)).collect();
    let mut s = help_text(
        "[options] [command]",
        "Hand Apache Arrow tables to another process through sealed shared memory, zero-copy.",
        &[("Options", vec![("-h, --help".into(), "display help")]), ("Commands", commands)],
    );
    s.push_str("\nRun `arrow-shm-rs COMMAND --help` for a command's options.\n");
    s
}

pub fn command_help(c: &Command) -> String {
    let mut options: Vec<(String, &str)> = c
        .flags
        .iter()
        .map(|&(name, help)| {
            let f = flag(name);
            let term = match f.value {
                Some(v) => format!("--{name} <{v}>"),
                None => format!("--{name}"),
            };
            (term, if help.is_empty() { f.help } else { help })
        })
        .collect();
    options.push(("-h, --help".into(), "display help for command"));
    help_text(&format!("{} [options]{}", c.name, operands(c)), c.about, &[("Options", options)])
}

/// The one-line usage (no command given): every command with its flags.
pub fn usage_line() -> String {
    let commands: Vec<String> = COMMANDS
        .iter()
        .map(|c| {
            let mut s = c.name.to_string();
            for &(name, _) in c.flags {
                let f = flag(name);
                let value = f.value.map(|v| format!(" {}", v.to_uppercase())).unwrap_or_default();
                let repeat = if name == "meta" { "..." } else { "" };
                let _ = match name {
                    "socket" | "store" => write!(s, " --{name}{value}"),
                    _ => write!(s, " [--{name}{value}]{repeat}"),
                };
            }
            s.push_str(&operands(c).replace(['<', '>'], "").replace("files...", "file...").to_uppercase());
            s
        })
        .collect();
    format!("usage: arrow-shm-rs {}", commands.join(" | "))
}

/// The parsed command line of one command.
#[derive(Default)]
pub struct Args {
    pub command: &'static str,
    pub socket: Option<String>,
    pub listen: bool,
    pub connect: bool,
    pub seed_compat: bool,
    pub allow_unsealed: bool,
    pub print: bool,
    pub meta: KeyValues,
    pub timeout_ms: Option<u64>,
    pub count: Option<u64>,
    pub out: Option<String>,
    pub files: Vec<String>,
    pub stream: bool,
    pub ring_bytes: Option<u64>,
    pub subscribers: Option<u64>,
    pub store: Option<String>,
    pub replace: bool,
    pub prefix: Option<String>,
    pub max_inline_bytes: Option<u64>,
}

fn number(v: std::ffi::OsString, flag: &str, min: u64) -> CliResult<u64> {
    let s = v.to_string_lossy().to_string();
    match s.parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        _ => usage(format!("--{flag} expects an integer >= {min}, got {s:?}")),
    }
}

/// Parses the rest of the command line of `c`: only its flags; FILE operands if it takes them.
pub fn parse_args(c: &'static Command, mut p: lexopt::Parser) -> CliResult<Args> {
    use lexopt::prelude::*;
    let mut a = Args { command: c.name, ..Args::default() };
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Err(CliError::Help(command_help(c))),
            Long(name) if c.flags.iter().any(|&(f, _)| f == name) => {
                let name = name.to_string();
                a.set(&name, &mut p)?;
            }
            Value(v) if c.operands != Operands::None => a.files.push(v.string()?),
            other => return Err(other.unexpected().into()),
        }
    }
    let wanted = match c.operands {
        Operands::Name => Some((1, "NAME")),
        Operands::NameFile => Some((2, "NAME FILE")),
        _ => None,
    };
    if let Some((_, what)) = wanted.filter(|&(n, _)| a.files.len() != n) {
        return usage(format!("{} needs {what}, got {} operands", c.name, a.files.len()));
    }
    Ok(a)
}

impl Args {
    fn set(&mut self, name: &str, p: &mut lexopt::Parser) -> CliResult<()> {
        use lexopt::ValueExt;
        match name {
            "socket" => self.socket = Some(p.value()?.string()?),
            "out" => self.out = Some(p.value()?.string()?),
            "store" => self.store = Some(p.value()?.string()?),
            "prefix" => self.prefix = Some(p.value()?.string()?),
            "replace" => self.replace = true,
            "meta" => {
                let v = p.value()?.string()?;
                let Some((k, val)) = v.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                    return usage(format!("--meta expects KEY=VALUE, got {v:?}"));
                };
                // a repeated key: the last value wins
                match self.meta.iter_mut().find(|(k2, _)| k2 == k) {
                    Some(e) => e.1 = val.to_string(),
                    None => self.meta.push((k.to_string(), val.to_string())),
                }
            }
            "timeout-ms" => self.timeout_ms = Some(number(p.value()?, name, 0)?),
            "count" => self.count = Some(number(p.value()?, name, 1)?),
            "ring-bytes" => self.ring_bytes = Some(number(p.value()?, name, 1)?),
            "subscribers" => self.subscribers = Some(number(p.value()?, name, 1)?),
            "max-inline-bytes" => self.max_inline_bytes = Some(number(p.value()?, name, 0)?),
            "listen" => self.listen = true,
            "connect" => self.connect = true,
            "seed-compat" => self.seed_compat = true,
            "allow-unsealed" => self.allow_unsealed = true,
            "print" => self.print = true,
            "stream" => self.stream = true,
            _ => unreachable!("--{name} is in the table but sets nothing"),
        }
        Ok(())
    }

    /// `--socket`, which the command needs here.
    pub fn socket(&self) -> CliResult<String> {
        match &self.socket {
            Some(s) => Ok(s.clone()),
            None => usage(format!("{} needs --socket ADDR", self.command)),
        }
    }

    /// `--store`, which the store commands need.
    pub fn store(&self) -> CliResult<String> {
        match &self.store {
            Some(s) => Ok(s.clone()),
            None => usage(format!("{} needs --store ADDR", self.command)),
        }
    }

    /// The FILE operands: at least one, each `-` or an existing file.
    pub fn check_files(&self) -> CliResult<()> {
        if self.files.is_empty() {
            return usage(format!("{} needs at least one FILE", self.command));
        }
        for f in &self.files {
            if f != "-" && !std::path::Path::new(f).is_file() {
                return usage(format!("no such file: {f}"));
            }
        }
        Ok(())
    }

    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timeout_ms.map(std::time::Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The help texts the table must keep producing (commander's layout, as the other peers).
    #[test]
    fn help_is_generated_from_the_table() {
        assert_eq!(
            command_help(command("sub").unwrap()),
            "Usage: arrow-shm-rs sub [options]

subscribe to a publication and write what it publishes as one IPC stream file

Options:
  --socket <addr>   socket path, or @name for an abstract socket
  --out <path>      write the stream to PATH
  --print           print schema and row counts
  --timeout-ms <n>  give up after N ms
  -h, --help        display help for command
"
        );
        assert!(program_help().contains("\n  send [options] <files...>    send each FILE")); // padded to `put`'s
        assert!(program_help().contains("\n  put [options] <name> <file>  put FILE"));
        assert!(usage_line().ends_with("| rm --store ADDR [--timeout-ms N] NAME"));
        assert!(usage_line().starts_with("usage: arrow-shm-rs send --socket ADDR [--listen]"));
    }
}
