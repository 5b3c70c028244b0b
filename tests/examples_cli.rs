//! Every example answers `--help` alike (exit 0, one line per flag, no work done, no file
//! written) and refuses an unknown flag or a bad value before starting work (exit 2, one line
//! naming it, "see --help"). Runs the example binaries that `cargo test` builds next to the
//! test binaries (`target/<profile>/examples/NAME`), each in an empty directory; no solves.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every example with the flags its help must list.
const EXAMPLES: &[(&str, &[&str])] = &[
    ("bouncing_ball", &["--bounces", "--iterations", "--svg"]),
    (
        "checkpointing",
        &["--workload", "--problem", "--reps", "--json", "--svg"],
    ),
    (
        "compare_backprop",
        &["--problem", "--json", "--reps", "--modes", "--precision"],
    ),
    ("gradcheck_cost", &["--strategy", "--per-input"]),
    ("gradient_check", &["--json", "--svg"]),
    ("memory_profile", &["--quick", "--json", "--svg"]),
    ("reversible", &["--method", "--reps", "--json", "--train"]),
    (
        "spiral",
        &[
            "--mode",
            "--iters",
            "--precision",
            "--json",
            "--svg",
            "--quiet",
        ],
    ),
    (
        "stiff",
        &[
            "--problems",
            "--methods",
            "--strategies",
            "--reps",
            "--explicit-steps",
            "--tangents",
            "--fit-iterations",
            "--no-fit",
            "--no-blocks",
            "--json",
        ],
    ),
    ("tangent_cost", &["--workload", "--problem", "--reps"]),
    ("tape_demo", &[]),
    ("tape_size", &["--json", "--svg"]),
];

/// Bad values, one per example that takes a checked value: (example, args, the flag named).
const BAD_VALUES: &[(&str, &[&str], &str)] = &[
    ("bouncing_ball", &["--bounces", "0"], "--bounces"),
    ("checkpointing", &["--workload", "sideways"], "--workload"),
    (
        "compare_backprop",
        &["--modes", "taped,nonsense"],
        "--modes",
    ),
    ("gradcheck_cost", &["--per-input", "x"], "--per-input"),
    ("gradient_check", &["--svg"], "--svg"),
    ("memory_profile", &["--json=yes"], "--json"),
    ("reversible", &["--method", "euler"], "--method"),
    ("spiral", &["--precision", "f16"], "--precision"),
    (
        "stiff",
        &["--problems", "robertson,brusselator"],
        "--problems",
    ),
    (
        "tangent_cost",
        &["--problem", "no/such/file.json"],
        "--problem",
    ),
    ("tape_size", &["--svg"], "--svg"),
];

/// `target/<profile>/examples/NAME`, checked to be newer than its source.
fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples_cli-<hash>
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo test` (which builds the examples) or `cargo build --examples` first",
                bin.display()
            )
        });
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let sources = [root.join(format!("{name}.rs")), root.join("support/cli.rs")];
    for src in sources {
        let changed = std::fs::metadata(&src).and_then(|m| m.modified());
        assert!(
            changed.map_or(true, |c| c <= built),
            "{} is older than {}: run `cargo build --examples` (or plain `cargo test`) first",
            bin.display(),
            src.display()
        );
    }
    bin
}

/// A fresh empty directory under the target dir for one run.
fn scratch(name: &str, case: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("examples_cli/{name}-{case}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Run `name` with `args` in an empty directory; the output and the files it left there.
fn run(name: &str, case: &str, args: &[&str]) -> (Output, Vec<PathBuf>) {
    let dir = scratch(name, case);
    let out = Command::new(example(name))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("the example runs");
    let left = walk(&dir);
    (out, left)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            found.extend(walk(&p));
        }
        found.push(p);
    }
    found
}

/// The flag a help line describes (`  --reps N   ...` → `--reps`, `  -h, --help ...` →
/// `--help`), or `None` for a line that is not a flag's.
fn flag_of(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    match words.next()? {
        "-h," => words.next(),
        w if line.starts_with("  -") => Some(w),
        _ => None,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_exits_zero_lists_every_flag_and_does_no_work() {
    for &(name, flags) in EXAMPLES {
        for help in ["--help", "-h"] {
            let (out, left) = run(name, "help", &[help]);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(out.status.code(), Some(0), "{name} {help}: {stderr}");
            assert!(stderr.is_empty(), "{name} {help} wrote to stderr: {stderr}");
            assert!(left.is_empty(), "{name} {help} wrote {left:?}");
            assert!(
                stdout.starts_with(&format!("usage: {name} ")),
                "{name} {help}: {stdout}"
            );
            // The flag lines: each the flag (and its value's placeholder), then its help.
            let listed: Vec<&str> = stdout.lines().filter_map(flag_of).collect();
            let mut want: Vec<&str> = flags.to_vec();
            want.push("--help");
            assert_eq!(
                listed, want,
                "{name} {help}: one line per flag in\n{stdout}"
            );
        }
        // --help wins over everything else on the line, bad arguments included.
        let (out, left) = run(name, "help-late", &["--bogus", "--help"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        assert!(left.is_empty(), "{name} --bogus --help wrote {left:?}");
    }
}

/// `name args` is refused before any work: status 2, nothing on stdout, no file, one line
/// on stderr naming `named` and pointing to --help.
fn assert_refused(name: &str, args: &[&str], named: &str) {
    let (out, left) = run(name, "refused", args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{name} {args:?}: {}",
        text(&out.stdout)
    );
    assert!(left.is_empty(), "{name} {args:?} wrote {left:?}");
    assert_eq!(stderr.lines().count(), 1, "{name} {args:?}: {stderr}");
    assert!(
        stderr.contains(named) && stderr.contains("see --help"),
        "{name} {args:?}: {stderr}"
    );
}

#[test]
fn unknown_flags_exit_two_with_one_line_naming_them() {
    for &(name, _) in EXAMPLES {
        for bad in ["--no-such-flag", "stray"] {
            assert_refused(name, &[bad], bad);
        }
    }
}

#[test]
fn bad_values_exit_two_naming_the_flag() {
    for &(name, args, flag) in BAD_VALUES {
        assert_refused(name, args, flag);
    }
}

#[test]
fn every_example_is_listed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    found.sort();
    let listed: Vec<&str> = EXAMPLES.iter().map(|(n, _)| *n).collect();
    assert_eq!(found, listed, "add new examples to EXAMPLES");
}

/// Run `name` with `args`, its stdout a pipe whose reader is already gone (`| head` that
/// has stopped reading): the status and stderr.
fn run_into_closed_pipe(name: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = scratch(name, "closed-pipe");
    let mut child = Command::new(example(name))
        .args(args)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the example runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("the example ends");
    (out.status.code(), text(&out.stderr))
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // tape_demo does its (tiny) work and prints; every example prints its help.
    let mut runs = vec![("tape_demo", Vec::new())];
    runs.extend(EXAMPLES.iter().map(|&(name, _)| (name, vec!["--help"])));
    for (name, args) in runs {
        let (code, stderr) = run_into_closed_pipe(name, &args);
        assert_eq!(code, Some(0), "{name} {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name} {args:?}: {stderr}");
    }
}
