//! Bounded mutation test of the problem-file loader: deterministic random edits of
//! `examples/problems/spiral_small.json` (deleted and duplicated ranges, flipped digits,
//! numbers replaced by NaN / 1e400 / -0 / huge integers, swapped brackets, truncation, ...)
//! either load, and then the problem saves, loads back and runs a taped forward and backward
//! pass (which may fail with an error), or fail with a typed error. Nothing panics.
//!
//! `COSTATE_MUTATIONS=N` sets the number of mutations (default 1000, about a second in
//! the dev profile); `COSTATE_MUTATION_SEED=S` another seed.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use nn::{Error, Problem, Strategy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SPIRAL: &str = include_str!("../../examples/problems/spiral_small.json");

/// Replacements for a number token.
const NUMBERS: &[&str] = &[
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "-0",
    "-0.0",
    "0",
    "1e308",
    "-1.7976931348623157e308",
    "5e-324",
    "1e-400",
    "99999999999999999999999999999999999999",
    "-18446744073709551617",
    "123456789012345678901234567890e300",
    "1.5",
    "-7",
    "2",
    "\"1.0\"",
    "null",
    "true",
    "[]",
    "{}",
];

/// Bytes the edits insert or swap in.
const BRACKETS: &[u8] = b"[]{}";

/// Byte offsets where a number token starts.
fn number_starts(text: &[u8]) -> Vec<usize> {
    (0..text.len())
        .filter(|&i| {
            let c = text[i];
            (c.is_ascii_digit() || c == b'-')
                && i > 0
                && matches!(text[i - 1], b'[' | b',' | b':' | b' ')
        })
        .collect()
}

fn number_end(text: &[u8], start: usize) -> usize {
    let mut end = start + 1;
    while end < text.len() && matches!(text[end], b'0'..=b'9' | b'.' | b'e' | b'E' | b'-' | b'+') {
        end += 1;
    }
    end
}

/// One deterministic random edit of `text`, and its description.
fn mutate(text: &[u8], numbers: &[usize], rng: &mut StdRng) -> (Vec<u8>, String) {
    let n = text.len();
    let mut out = text.to_vec();
    let kind = rng.random_range(0..9);
    let desc = match kind {
        0 => {
            let at = rng.random_range(0..n);
            let len = rng.random_range(1..=40).min(n - at);
            out.drain(at..at + len);
            format!("delete {len} bytes at {at}")
        }
        1 => {
            let at = rng.random_range(0..n);
            let len = rng.random_range(1..=40).min(n - at);
            let copy = text[at..at + len].to_vec();
            let to = rng.random_range(0..=n);
            out.splice(to..to, copy);
            format!("duplicate {len} bytes from {at} to {to}")
        }
        2 => {
            let digits: Vec<usize> = (0..n).filter(|&i| text[i].is_ascii_digit()).collect();
            let at = digits[rng.random_range(0..digits.len())];
            let d = b'0' + rng.random_range(0..10u8);
            out[at] = d;
            format!("digit at {at} -> {}", d as char)
        }
        3 | 4 => {
            let start = numbers[rng.random_range(0..numbers.len())];
            let end = number_end(text, start);
            let with = NUMBERS[rng.random_range(0..NUMBERS.len())];
            out.splice(start..end, with.bytes());
            format!(
                "number {:?} at {start} -> {with}",
                std::str::from_utf8(&text[start..end]).unwrap()
            )
        }
        5 => {
            let at: Vec<usize> = (0..n).filter(|&i| BRACKETS.contains(&text[i])).collect();
            let at = at[rng.random_range(0..at.len())];
            let b = BRACKETS[rng.random_range(0..BRACKETS.len())];
            out[at] = b;
            format!("bracket at {at} -> {}", b as char)
        }
        6 => {
            let at = rng.random_range(0..n);
            out.truncate(at);
            format!("truncate at {at}")
        }
        7 => {
            let at = rng.random_range(0..=n);
            let junk: &[&[u8]] = &[b",", b":", b"\"", b"]", b"}", b"x", b" 1", b"\\", b"NaN"];
            let j = junk[rng.random_range(0..junk.len())];
            out.splice(at..at, j.iter().copied());
            format!("insert {:?} at {at}", std::str::from_utf8(j).unwrap())
        }
        _ => {
            // Two number edits at once (e.g. a shape and a value).
            let mut desc = String::from("two numbers:");
            for _ in 0..2 {
                let nums = number_starts(&out);
                let start = nums[rng.random_range(0..nums.len())];
                let end = number_end(&out, start);
                let with = NUMBERS[rng.random_range(0..NUMBERS.len())];
                out.splice(start..end, with.bytes());
                desc.push_str(&format!(" {start} -> {with};"));
            }
            desc
        }
    };
    (out, desc)
}

/// What happened to one mutated document.
enum Outcome {
    /// Loaded; the forward (and backward) pass gave this.
    Loaded { forward: Result<(), String> },
    /// Refused with this error variant.
    Refused(&'static str),
}

fn variant(e: &Error) -> &'static str {
    match e {
        Error::Ode(_) => "Ode",
        Error::Tape(_) => "Tape",
        Error::Format { .. } => "Format",
        Error::Io { .. } => "Io",
        Error::Mismatch(_) => "Mismatch",
        Error::Model { .. } => "Model",
        Error::Json { .. } => "Json",
        Error::NonFiniteSave { .. } => "NonFiniteSave",
        Error::Hyperparameter { .. } => "Hyperparameter",
        Error::NonFiniteGradient { .. } => "NonFiniteGradient",
        Error::NonFiniteUpdate { .. } => "NonFiniteUpdate",
        Error::Overflow { .. } => "Overflow",
    }
}

/// Load `text`; if it loads, check it saves and loads back identically, then run one taped
/// forward and backward pass (step count capped to bound the time).
fn run(text: &str) -> Result<Outcome, String> {
    let p = match Problem::from_json(text) {
        Ok(p) => p,
        Err(e) => {
            match &e {
                Error::Format { key, message } if key.contains('?') || message.is_empty() => {
                    return Err(format!("vague error: {e}"));
                }
                Error::Json { message, .. } if message.contains("`?") => {
                    return Err(format!("vague error: {e}"));
                }
                _ => {}
            }
            if e.to_string().is_empty() {
                return Err("empty error message".into());
            }
            return Ok(Outcome::Refused(variant(&e)));
        }
    };
    // A loaded problem is savable, and loads back the same.
    let saved = p
        .to_json()
        .map_err(|e| format!("loaded but does not save: {e}"))?;
    let q = Problem::from_json(&saved).map_err(|e| format!("saved but does not load: {e}"))?;
    if q.params != p.params || q.h0 != p.h0 || q.t != p.t || q.loss != p.loss || q.file != p.file {
        return Err("save/load round trip changed the problem".into());
    }
    let mut p = p;
    p.options.max_num_steps = p.options.max_num_steps.min(2_000);
    let forward = p.gradients(&Strategy::Taped).map(|_| ());
    // The same problem in f32 runs or fails with a typed error too (values beyond f32's
    // range, tolerances below its precision); a panic is caught by the caller.
    if let Err(e) = p.gradients_in::<f32>(&Strategy::Taped) {
        if e.to_string().is_empty() {
            return Err("empty f32 error message".into());
        }
    }
    Ok(Outcome::Loaded {
        forward: forward.map_err(|e| variant(&e).to_owned()),
    })
}

#[test]
fn mutated_problem_files_load_or_fail_with_typed_errors() {
    let count: usize = std::env::var("COSTATE_MUTATIONS")
        .ok()
        .map(|v| v.trim().parse().expect("COSTATE_MUTATIONS must be a count"))
        .unwrap_or(1000);
    let seed: u64 = std::env::var("COSTATE_MUTATION_SEED")
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .expect("COSTATE_MUTATION_SEED must be an integer")
        })
        .unwrap_or(0x5eed);
    // The unmutated file loads and runs.
    assert!(matches!(
        run(SPIRAL),
        Ok(Outcome::Loaded { forward: Ok(()) })
    ));
    let original = SPIRAL.as_bytes();
    let numbers = number_starts(original);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut refused: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (mut loaded, mut forward_ok, mut forward_err) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..count {
        let (bytes, desc) = mutate(original, &numbers, &mut rng);
        // The edits are ASCII; a mutated ASCII document is still UTF-8.
        let text = String::from_utf8(bytes).expect("ASCII edits keep UTF-8");
        match catch_unwind(AssertUnwindSafe(|| run(&text))) {
            Ok(Ok(Outcome::Refused(v))) => *refused.entry(v).or_default() += 1,
            Ok(Ok(Outcome::Loaded { forward })) => {
                loaded += 1;
                match forward {
                    Ok(()) => forward_ok += 1,
                    Err(_) => forward_err += 1,
                }
            }
            Ok(Err(why)) => failures.push(format!("mutation {i} ({desc}): {why}")),
            Err(_) => failures.push(format!("mutation {i} ({desc}): PANICKED")),
        }
    }
    let errors: usize = refused.values().sum();
    eprintln!(
        "{count} mutations (seed {seed:#x}) in {:.2?}: {loaded} loaded ({forward_ok} forward ok, \
         {forward_err} forward errors), {errors} refused {refused:?}, {} failures",
        started.elapsed(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The mutations reach both outcomes (the test is not vacuous).
    if count >= 100 {
        assert!(loaded > count / 20, "only {loaded} of {count} loaded");
        assert!(errors > count / 4, "only {errors} of {count} refused");
        assert!(refused.contains_key("Format") && refused.contains_key("Json"));
    }
}
