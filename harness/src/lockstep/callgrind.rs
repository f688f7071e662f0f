//! Counting instructions with `valgrind --tool=callgrind`, for hosts whose CPU exposes no
//! counter: the binary runs itself under callgrind (the hidden `lockstep-step` subcommand,
//! one combination), once counting only inside the guest's measured steps and once only
//! inside the device's (`--collect-atstart=no --toggle-collect=*<function>*`, the functions
//! of [`super::schedule::Named`]), so neither set-up nor warm-up nor the schedule's own
//! bookkeeping is counted. Each run's `totals:` line is its side's instructions; both runs
//! must have stepped the same packets the same way, or the counts are refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::schedule::{Window, DEVICE_FN, GUEST_FN};
use super::Step;

/// `valgrind --version` (`valgrind-3.19.0`); an error saying how to install it if it is not
/// there.
pub fn version() -> Result<String> {
    let out = Command::new("valgrind")
        .arg("--version")
        .output()
        .context("running valgrind (apt-get install valgrind)")?;
    ensure!(out.status.success(), "valgrind --version: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A callgrind output file, removed when dropped.
struct OutFile(PathBuf);

impl OutFile {
    fn new(what: &str) -> OutFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        OutFile(std::env::temp_dir().join(format!(
            "vhostbench-callgrind-{}-{n}-{what}.out",
            std::process::id()
        )))
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The instructions a callgrind output file counted: its `totals:` line (or, in older
/// versions, `summary:`), whose first event is `Ir`.
pub fn totals(text: &str) -> Result<u64> {
    let events = text
        .lines()
        .find_map(|l| l.strip_prefix("events:"))
        .ok_or_else(|| anyhow!("no events line"))?;
    ensure!(
        events.split_whitespace().next() == Some("Ir"),
        "the first event counted is not Ir: {events}"
    );
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("summary:")))
        .ok_or_else(|| anyhow!("no totals line"))?;
    let first = line
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("an empty totals line"))?;
    first
        .parse()
        .with_context(|| format!("totals {first:?} is not a count"))
}

/// Runs `step` under callgrind with `exe` (a `vhostbench` binary) counting inside `function`
/// only: what the step loop counted, and the instructions.
fn run_counting(exe: &Path, step: &Step, function: &str) -> Result<(Window, u64)> {
    let out = OutFile::new(function);
    let json = serde_json::to_string(step)?;
    let o = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("-q")
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect=*{function}*"))
        .arg(format!("--callgrind-out-file={}", out.0.display()))
        .arg(exe)
        .args(["lockstep-step", "--step", &json])
        .output()
        .context("running valgrind (apt-get install valgrind)")?;
    if !o.status.success() {
        bail!(
            "{} under callgrind: {}: {}",
            step.label(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let w: Window = serde_json::from_slice(&o.stdout).with_context(|| {
        format!(
            "{} under callgrind printed no counts: {}",
            step.label(),
            String::from_utf8_lossy(&o.stdout).trim()
        )
    })?;
    let text = fs::read_to_string(&out.0)
        .with_context(|| format!("reading callgrind's {}", out.0.display()))?;
    let n = totals(&text).with_context(|| format!("callgrind's {}", out.0.display()))?;
    Ok((w, n))
}

/// Steps `step` twice under callgrind (see the module documentation): what was stepped, and
/// the guest's and the device's instructions in the measured window.
pub fn measure(exe: &Path, step: &Step) -> Result<(Window, u64, u64)> {
    let (w, guest) = run_counting(exe, step, GUEST_FN)?;
    let (again, device) = run_counting(exe, step, DEVICE_FN)?;
    ensure!(
        w == again,
        "{}: the two runs under callgrind stepped differently ({w:?}, then {again:?})",
        step.label()
    );
    Ok((w, guest, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_read_from_either_line() {
        let new = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=(1) main\n3 10\n\
                   summary: 13000\ntotals: 13000\n";
        assert_eq!(totals(new).expect("totals"), 13000);
        let old = "events: Ir Dr\nsummary: 42 7\n";
        assert_eq!(totals(old).expect("summary"), 42);
        assert!(totals("events: Dr Ir\ntotals: 1 2\n").is_err(), "Ir first");
        assert!(totals("events: Ir\n").is_err(), "no totals");
        assert!(totals("totals: 5\n").is_err(), "no events line");
        assert!(totals("events: Ir\ntotals: x\n").is_err(), "not a number");
    }
}
