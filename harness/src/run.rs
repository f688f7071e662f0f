//! `vhostbench run`: the benchmark matrix. Not built yet.

use crate::cli::RunArgs;

/// Runs the configured matrix and writes the results file.
pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("run: not built yet")
}
