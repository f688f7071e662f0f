//! Reading and writing results files, and where they go by default.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};

use super::{Results, UtcTime, READABLE_SCHEMA_VERSIONS, TOOL};

/// Where a run's results go: decided, and checked, before anything is measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Standard output (`--out -`, `--json`).
    Stdout,
    /// A file: the path given, with symbolic links followed to the file they name (written
    /// there, so the link stays a link).
    File {
        /// As the user gave it.
        given: PathBuf,
        /// Where it is written.
        target: PathBuf,
    },
}

impl Destination {
    /// `-` is stdout. Any other path is checked now, so that minutes of measurements are not
    /// thrown away at the end: it must not be a directory or anything but a regular file, an
    /// existing file must not be read-only (its mode has no write bit: root could write it
    /// anyway, but someone protected it), and its directory must exist (only the default
    /// `results/` directory is created: a mistyped path is an error, not a new tree) and
    /// take a new file (one is created there and removed).
    pub fn prepare(path: &Path, create_dir: bool) -> anyhow::Result<Destination> {
        if path.as_os_str() == "-" {
            return Ok(Destination::Stdout);
        }
        let target = follow_links(path)?;
        match fs::metadata(&target) {
            Ok(m) if m.is_dir() => bail!("{} is a directory", path.display()),
            Ok(m) if !m.is_file() => bail!("{} is not a regular file", path.display()),
            Ok(m) if m.permissions().readonly() => bail!(
                "{} is read-only; remove it or choose another --out",
                path.display()
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        }
        let dir = parent_dir(&target);
        if create_dir {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        } else if !dir.is_dir() {
            bail!(
                "{}: directory {} does not exist",
                path.display(),
                dir.display()
            );
        }
        let probe = temp_path(&target);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .with_context(|| format!("cannot write a file in {}", dir.display()))?;
        let _ = fs::remove_file(&probe);
        Ok(Destination::File {
            given: path.to_path_buf(),
            target,
        })
    }

    /// Writes `results` there: to stdout as one JSON document, or to the file whole or not at
    /// all (a unique temporary file beside it, renamed over it).
    pub fn write(&self, results: &Results) -> anyhow::Result<()> {
        let text = to_json(results)?;
        match self {
            Destination::Stdout => {
                // A reader that went away is not an error here: the run says so elsewhere.
                crate::out::write_stdout_text(&text);
                Ok(())
            }
            Destination::File { given, target } => write_whole(target, &text)
                .with_context(|| format!("writing the results to {}", given.display())),
        }
    }

    /// How it is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Destination::Stdout => "stdout".into(),
            Destination::File { given, .. } => given.display().to_string(),
        }
    }
}

/// The JSON text of `results`, parsed back first: a value JSON cannot hold (NaN, infinity) is
/// an error here rather than an unreadable file later.
fn to_json(results: &Results) -> anyhow::Result<String> {
    let text = serde_json::to_string_pretty(results).context("serializing results")?;
    let back: Results = serde_json::from_str(&text)
        .context("results do not survive a JSON round trip (a NaN or infinite number?)")?;
    ensure!(
        &back == results,
        "results do not survive a JSON round trip (a NaN or infinite number?)"
    );
    Ok(text + "\n")
}

/// `path` with symbolic links followed (at most 40, as the kernel allows), to the path that
/// is really written; a link to a file not there yet gives that file's path.
fn follow_links(path: &Path) -> anyhow::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to =
                    fs::read_link(&p).with_context(|| format!("reading link {}", p.display()))?;
                p = parent_dir(&p).join(to);
            }
            _ => return Ok(p),
        }
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

/// The directory a file is in (`.` for a bare name).
fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temporary name beside `target`, unique to this process and call.
fn temp_path(target: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .map_or_else(|| "results".into(), |n| n.to_string_lossy().into_owned());
    parent_dir(target).join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `text` to `target` through a unique temporary file renamed over it; the temporary
/// file is removed if anything fails.
fn write_whole(target: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = temp_path(target);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            fs::rename(&tmp, target).with_context(|| format!("renaming to {}", target.display()))
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes `results` as pretty JSON to `path`, creating parent directories, following
/// symbolic links; the file appears whole or not at all (see [`Destination::write`]).
pub fn write_results(path: &Path, results: &Results) -> anyhow::Result<()> {
    let text = to_json(results)?;
    let target = follow_links(path)?;
    let dir = parent_dir(&target);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_whole(&target, &text)
}

/// Reads a results file of a version this build reads ([`READABLE_SCHEMA_VERSIONS`]). Each
/// way a file can be unusable is its own error naming the file: unreadable, not JSON, not a
/// vhostbench results document, a schema version this build does not read, fields that do not
/// decode.
pub fn read_results(path: &Path) -> anyhow::Result<Results> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}: not JSON", path.display()))?;
    let tool = v.get("tool").and_then(serde_json::Value::as_str);
    ensure!(
        tool == Some(TOOL),
        "{}: not a vhostbench results document ({})",
        path.display(),
        match tool {
            Some(other) => format!("its \"tool\" is {other:?}"),
            None if v.is_object() => "no \"tool\": \"vhostbench\" field".to_string(),
            None => "not a JSON object".to_string(),
        }
    );
    let version = v.get("schema_version").and_then(serde_json::Value::as_u64);
    ensure!(
        version
            .and_then(|v| u32::try_from(v).ok())
            .is_some_and(|v| READABLE_SCHEMA_VERSIONS.contains(&v)),
        "{}: schema_version {}, this build reads {}..={}{}",
        path.display(),
        version.map_or_else(|| "missing".to_string(), |v| v.to_string()),
        READABLE_SCHEMA_VERSIONS.start(),
        READABLE_SCHEMA_VERSIONS.end(),
        if version.is_some_and(|v| v > u64::from(*READABLE_SCHEMA_VERSIONS.end())) {
            " (written by a newer vhostbench)"
        } else {
            ""
        }
    );
    serde_json::from_value(v).with_context(|| format!("decoding {}", path.display()))
}

/// The workspace root: the nearest ancestor of the current directory whose `Cargo.toml` has a
/// `[workspace]` table; the current directory if there is none.
pub fn workspace_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .find(|d| is_workspace_root(d))
        .map_or_else(|| cwd.clone(), Path::to_path_buf)
}

fn is_workspace_root(dir: &Path) -> bool {
    fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
}

/// `<workspace root>/results/run-<YYYYMMDDTHHMMSSZ>.json`.
pub fn default_results_path(started: &UtcTime) -> PathBuf {
    workspace_root()
        .join("results")
        .join(format!("run-{}.json", started.compact()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::schema::tests::sample_results;

    #[test]
    fn write_and_read_back() {
        let dir = std::env::temp_dir().join(format!("vhostbench-test-{}", std::process::id()));
        let path = dir.join("nested/run.json");
        let r = sample_results();
        write_results(&path, &r).expect("write");
        assert_eq!(read_results(&path).expect("read"), r);
        let mut nan = r.clone();
        nan.calibration.pingpong_rtt_ns = f64::NAN;
        assert!(write_results(&dir.join("nan.json"), &nan).is_err());
        // Version 1 has the same layout and reads; a version this build does not know does not.
        for (version, reads) in [(1, true), (2, true), (0, false), (3, false)] {
            let mut v = r.clone();
            v.schema_version = version;
            let p = dir.join(format!("v{version}.json"));
            write_results(&p, &v).expect("write");
            match read_results(&p) {
                Ok(back) => assert!(reads && back == v, "version {version}"),
                Err(e) => assert!(!reads && format!("{e}").contains("reads 1..=2"), "{e}"),
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unusable_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("text.json", "not json at all", "not JSON"),
            (
                "array.json",
                "[1, 2]",
                "not a vhostbench results document (not a JSON object)",
            ),
            (
                "other.json",
                r#"{"tool": "criterion", "schema_version": 2}"#,
                r#"its "tool" is "criterion""#,
            ),
            (
                "bare.json",
                r#"{"records": []}"#,
                r#"no "tool": "vhostbench" field"#,
            ),
            (
                "noversion.json",
                r#"{"tool": "vhostbench"}"#,
                "schema_version missing, this build reads 1..=2",
            ),
            (
                "v9.json",
                r#"{"tool": "vhostbench", "schema_version": 9}"#,
                "schema_version 9, this build reads 1..=2 (written by a newer vhostbench)",
            ),
            (
                "fields.json",
                r#"{"tool": "vhostbench", "schema_version": 2}"#,
                "decoding",
            ),
        ];
        for (name, text, want) in cases {
            let p = dir.path().join(name);
            fs::write(&p, text).expect("write");
            let e = format!("{:#}", read_results(&p).expect_err(name));
            assert!(e.contains(want) && e.contains(name), "{name}: {e}");
        }
        let e = format!(
            "{:#}",
            read_results(&dir.path().join("absent.json")).expect_err("absent")
        );
        assert!(
            e.starts_with("reading ") && e.contains("absent.json"),
            "{e}"
        );
    }

    #[test]
    fn committed_results_read_and_write_back_unchanged() {
        let dir = workspace_root().join("results");
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .expect("results directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no results files in {}", dir.display());
        for path in files {
            let r = read_results(&path).unwrap_or_else(|e| panic!("{e:#}"));
            // The layout is unchanged: the file is exactly what `write_results` would write.
            let text = fs::read_to_string(&path).expect("read");
            let again = serde_json::to_string_pretty(&r).expect("serialize") + "\n";
            assert!(
                text == again,
                "{} does not write back the same",
                path.display()
            );
        }
    }

    #[test]
    fn default_path_is_under_results() {
        let p = default_results_path(&UtcTime::from_unix_secs(0));
        assert!(
            p.ends_with("results/run-19700101T000000Z.json"),
            "{}",
            p.display()
        );
    }
}
