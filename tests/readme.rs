//! The README's commands work on a fresh clone: every `cargo run --example NAME -- ARGS`
//! names an example of this repository, every file argument is inside it, and the argument
//! forms parse the way the examples read them (strategy names, problem files).

use costate::nn::{Problem, Strategy};

const README: &str = include_str!("../README.md");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `(example, arguments)` of every `cargo run ... --example NAME [-- ARGS]` in the README.
fn commands() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in README.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("cargo run") {
            rest = &rest[i..];
            let end = rest.find('`').unwrap_or(rest.len());
            let words: Vec<&str> = rest[..end].split_whitespace().collect();
            if let Some(k) = words.iter().position(|w| *w == "--example") {
                let name = words[k + 1].to_string();
                let args = match words.iter().position(|w| *w == "--") {
                    Some(d) => words[d + 1..].iter().map(|s| s.to_string()).collect(),
                    None => Vec::new(),
                };
                out.push((name, args));
            }
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn readme_commands_name_examples_and_files_of_this_repository() {
    let cmds = commands();
    assert!(cmds.len() >= 4, "{cmds:?}");
    assert!(README.contains("cargo test --workspace"));
    for (name, args) in &cmds {
        let path = format!("{ROOT}/examples/{name}.rs");
        assert!(std::path::Path::new(&path).exists(), "no example {name}");
        let mut it = args.iter();
        while let Some(a) = it.next() {
            assert!(
                !a.contains("../"),
                "{name}: {a} points outside the repository"
            );
            match a.as_str() {
                "--problem" => {
                    let file = it.next().expect("--problem takes a path");
                    let p = Problem::load(format!("{ROOT}/{file}"))
                        .unwrap_or_else(|e| panic!("{name} --problem {file}: {e}"));
                    assert!(!p.t.is_empty());
                }
                "--mode" | "--modes" => {
                    for m in it.next().expect("a strategy list").split(',') {
                        m.parse::<Strategy>()
                            .unwrap_or_else(|e| panic!("{name} {a} {m}: {e}"));
                    }
                }
                _ => {}
            }
        }
    }
}

/// The strategy lists the README and the examples' docs show parse.
#[test]
fn documented_strategy_lists_parse() {
    for m in "taped,backsolve,aca,checkpointed:2,auto:3000000,backsolve-checkpointed:5".split(',') {
        m.parse::<Strategy>().unwrap_or_else(|e| panic!("{m}: {e}"));
    }
}
