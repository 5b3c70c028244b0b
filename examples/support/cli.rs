//! An example's command line and `main`: one flag table per example, from which both the
//! parsing and the `--help` text come, so that every example answers `--help` (and `-h`)
//! alike and refuses an argument it does not know before starting any work.
//!
//! ```ignore
//! const CLI: Cli = Cli {
//!     name: "tape_size",
//!     about: "How memory scales with the horizon under each gradient strategy.",
//!     flags: &[
//!         Flag::switch("--json", "print one JSON object instead of the table"),
//!         Flag::value("--svg", "PATH", "the chart (default target/tape_size.svg)"),
//!     ],
//! };
//! fn main() {
//!     support::cli::run_main(&CLI, parse_args, run);
//! }
//! ```
//!
//! Exit status: 0 after `--help` (nothing else is done), 2 for an argument that is unknown,
//! lacks its value or has a bad one (one line on stderr naming it, then "see --help"), 1 when
//! the run itself fails. Output to a closed pipe (`--json | head -1`) ends the process quietly
//! with status 0 instead of panicking.

use std::fmt::{self, Display, Write as _};

/// One command-line flag: its name (`--reps`), the placeholder of its value (`N`) if it
/// takes one, and one line of help.
#[derive(Clone, Copy, Debug)]
pub struct Flag {
    pub name: &'static str,
    pub value: Option<&'static str>,
    pub help: &'static str,
}

impl Flag {
    /// A flag without a value (`--json`).
    pub const fn switch(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            value: None,
            help,
        }
    }

    /// A flag followed by a value (`--reps N`, or `--reps=N`).
    pub const fn value(name: &'static str, placeholder: &'static str, help: &'static str) -> Self {
        Self {
            name,
            value: Some(placeholder),
            help,
        }
    }
}

/// An example's command line: its name, one line saying what it does, and its flags.
#[derive(Clone, Copy, Debug)]
pub struct Cli {
    pub name: &'static str,
    pub about: &'static str,
    pub flags: &'static [Flag],
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    /// `--help` or `-h` (anywhere): print the help, do nothing else.
    Help,
    /// The flags given, with their values.
    Run(Matches),
}

/// The flags given, in order, each with its value if it takes one.
#[derive(Debug)]
pub struct Matches {
    cli: Cli,
    given: Vec<(&'static str, Option<String>)>,
}

/// An argument that was not understood: one line, naming the argument.
#[derive(Debug, Clone, PartialEq)]
pub struct ArgError(pub String);

impl Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for ArgError {
    fn from(s: String) -> Self {
        ArgError(s)
    }
}

impl From<&str> for ArgError {
    fn from(s: &str) -> Self {
        ArgError(s.to_owned())
    }
}

impl Cli {
    fn flag(&self, name: &str) -> Option<&'static Flag> {
        self.flags.iter().find(|f| f.name == name)
    }

    /// The help text: a usage line, what the example does, one line per flag.
    pub fn help(&self) -> String {
        let column = |f: &Flag| match f.value {
            Some(v) => format!("{} {v}", f.name),
            None => f.name.to_owned(),
        };
        let help_flag = "-h, --help";
        let width = self
            .flags
            .iter()
            .map(|f| column(f).chars().count())
            .chain([help_flag.len()])
            .max()
            .unwrap_or(0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "usage: {0} [OPTIONS]    (cargo run --release --example {0} -- [OPTIONS])",
            self.name
        );
        let _ = writeln!(s, "{}", self.about);
        let _ = writeln!(s, "\noptions:");
        for f in self.flags {
            let _ = writeln!(s, "  {:<width$}  {}", column(f), f.help);
        }
        let _ = writeln!(s, "  {help_flag:<width$}  print this help and exit");
        s
    }

    /// Parse `args` (without the program name) against the flag table.
    pub fn parse<I: IntoIterator<Item = String>>(&self, args: I) -> Result<Parsed, ArgError> {
        let args: Vec<String> = args.into_iter().collect();
        if args.iter().any(|a| a == "--help" || a == "-h") {
            return Ok(Parsed::Help);
        }
        let mut given = Vec::new();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let Some(flag) = self.flag(&name) else {
                return Err(format!("unknown argument {arg:?}").into());
            };
            let value = match (flag.value, inline) {
                (None, None) => None,
                (None, Some(_)) => return Err(format!("{} takes no value", flag.name).into()),
                (Some(_), Some(v)) => Some(v),
                (Some(p), None) => match it.next() {
                    Some(v) if !v.starts_with("--") => Some(v),
                    _ => return Err(format!("{} needs a value ({p})", flag.name).into()),
                },
            };
            given.push((flag.name, value));
        }
        Ok(Parsed::Run(Matches { cli: *self, given }))
    }
}

impl Matches {
    fn declared(&self, name: &str) {
        assert!(
            self.cli.flag(name).is_some(),
            "{}: flag {name} is not in the flag table",
            self.cli.name
        );
    }

    /// Whether `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.declared(name);
        self.given.iter().any(|(n, _)| *n == name)
    }

    /// The value of `name`'s last occurrence, if it was given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.declared(name);
        self.given
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// `name`'s value converted by `convert` (whose error is prefixed with the flag's
    /// name), or `None` when the flag was not given.
    pub fn parse<T, E: Display>(
        &self,
        name: &str,
        convert: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ArgError> {
        self.value(name)
            .map(|v| convert(v).map_err(|e| ArgError(format!("{name}: {e}"))))
            .transpose()
    }

    /// `name`'s value converted by `convert`, or `default` when the flag was not given.
    pub fn parse_or<T, E: Display>(
        &self,
        name: &str,
        default: T,
        convert: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, ArgError> {
        Ok(self.parse(name, convert)?.unwrap_or(default))
    }

    /// `name`'s value as a string, or `default`.
    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.value(name).unwrap_or(default).to_owned()
    }
}

/// A positive integer.
pub fn positive(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, got {v:?}")),
    }
}

/// A non-negative integer.
pub fn count(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .map_err(|_| format!("expected a non-negative integer, got {v:?}"))
}

/// One of `choices`.
pub fn one_of<'a>(choices: &'a [&'a str]) -> impl Fn(&str) -> Result<&'a str, String> + 'a {
    move |v| {
        choices
            .iter()
            .find(|c| **c == v)
            .copied()
            .ok_or_else(|| format!("expected one of {}, got {v:?}", choices.join(", ")))
    }
}

/// A path to an existing file.
pub fn existing_file(v: &str) -> Result<String, String> {
    if std::path::Path::new(v).is_file() {
        Ok(v.to_owned())
    } else {
        Err(format!("no such file {v:?}"))
    }
}

/// Run an example: parse the command line against `cli` (`--help`: print the help, exit 0;
/// a bad argument: one line naming it and "see --help", exit 2), convert the flags with
/// `parse` (same failure), then `run` (exit 1 with the error on failure). Output to a
/// closed pipe ends the process quietly with status 0.
pub fn run_main<A, E: Display>(
    cli: &Cli,
    parse: impl FnOnce(&Matches) -> Result<A, ArgError>,
    run: impl FnOnce(&A) -> Result<(), E>,
) {
    quiet_on_closed_stdout();
    let fail = |e: ArgError| -> ! {
        eprintln!("{}: {e}; see --help", cli.name);
        std::process::exit(2);
    };
    let matches = match cli.parse(std::env::args().skip(1)) {
        Ok(Parsed::Help) => {
            print!("{}", cli.help());
            std::process::exit(0);
        }
        Ok(Parsed::Run(m)) => m,
        Err(e) => fail(e),
    };
    let args = parse(&matches).unwrap_or_else(|e| fail(e));
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `println!` panics when stdout is a pipe whose reader has gone (`--json | head -1`):
/// make that panic end the process quietly with status 0, as a reader that stopped early
/// expects; every other panic is reported as before.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_closed_stdout(msg) {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Whether `msg` is std's panic for a write to stdout that failed with EPIPE.
fn is_closed_stdout(msg: &str) -> bool {
    let broken = std::io::Error::from(std::io::ErrorKind::BrokenPipe).to_string();
    msg.starts_with("failed printing to stdout")
        && (msg.contains("os error 32") || msg.contains("Broken pipe") || msg.contains(&broken))
}
