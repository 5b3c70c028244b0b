//! An example's `main`: parse the arguments, run, and exit with a status that says which of
//! the two failed.

use std::fmt::Display;

/// Parse with `parse` (exit status 2 and the message on failure), then `run` (exit status
/// 1 and the error on failure).
pub fn run_main<A, E: Display>(
    parse: impl FnOnce() -> Result<A, String>,
    run: impl FnOnce(&A) -> Result<(), E>,
) {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
