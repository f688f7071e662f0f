//! Where `vhostbench run` says things, and what ends a run early.
//!
//! Prose (progress, notes, the table) goes to stdout, unless stdout carries the results
//! (`--json`, `--out -`): then it goes to stderr, so that `vhostbench run --json | jq` reads
//! exactly one JSON document. A stdout that closes under the run (`vhostbench run | head -1`)
//! is not an error: nothing more is written to it, and the run ends after the combination in
//! progress, quietly, with what finished written to its results file, as on Ctrl-C.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Prose goes to stderr (stdout carries the results).
static TO_STDERR: AtomicBool = AtomicBool::new(false);
/// A write to stdout failed with a broken pipe: its reader is gone.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Sends prose to stderr from now on (stdout is for the results document).
pub fn prose_to_stderr() {
    TO_STDERR.store(true, Ordering::Relaxed);
}

/// Whether stdout's reader went away.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Writes one line of prose (see the module documentation). Used through [`crate::say!`].
pub fn say_line(args: fmt::Arguments<'_>) {
    if TO_STDERR.load(Ordering::Relaxed) {
        let _ = writeln!(io::stderr().lock(), "{args}");
        return;
    }
    write_stdout(|w| writeln!(w, "{args}"));
}

/// Writes `text` (a table: whole lines) where prose goes, as it is.
pub fn say_text(text: &str) {
    if TO_STDERR.load(Ordering::Relaxed) {
        let _ = io::stderr().lock().write_all(text.as_bytes());
        return;
    }
    write_stdout(|w| w.write_all(text.as_bytes()));
}

/// Whether prose goes to stderr.
pub fn prose_on_stderr() -> bool {
    TO_STDERR.load(Ordering::Relaxed)
}

/// Writes `text` to stdout as it is (a table, the results document), unless its reader is
/// gone. Returns whether it was written.
pub fn write_stdout_text(text: &str) -> bool {
    write_stdout(|w| w.write_all(text.as_bytes()))
}

/// Writes to stdout and flushes; a broken pipe marks stdout closed instead of failing. Other
/// errors are reported once on stderr.
fn write_stdout(f: impl FnOnce(&mut io::StdoutLock<'_>) -> io::Result<()>) -> bool {
    if stdout_closed() {
        return false;
    }
    let mut w = io::stdout().lock();
    match f(&mut w).and_then(|()| w.flush()) {
        Ok(()) => true,
        Err(e) => {
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("vhostbench: writing to stdout: {e}; the run goes on");
            }
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            false
        }
    }
}

/// `println!` for `run`'s prose: to stdout, or to stderr when stdout carries the results; a
/// closed stdout ends nothing by itself (see [`stdout_closed`]).
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        $crate::out::say_line(format_args!($($t)*))
    };
}
