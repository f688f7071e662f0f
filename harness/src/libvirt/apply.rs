//! `run --interface`: a [`Mapping`] becomes the run's options. What the file cannot honour
//! is an error, and so is an option given on the command line that says otherwise than the
//! file (the error names both); an option the file does not set still applies.

use super::error::LibvirtError;
use super::{map_files, Mapping, SysfsRoot};
use crate::cli::RunArgs;
use crate::modes::Selector;
use crate::topology;

/// If `args` names an interface file, maps it (on this host) and applies it to `args`.
/// `given` lists the ids of the run options given on the command line (see
/// [`crate::cli::given_run_options`]). Returns the mapping, to be shown before the run.
pub fn for_run(args: &mut RunArgs, given: &[String]) -> Result<Option<Mapping>, LibvirtError> {
    let Some(file) = args.interface.clone() else {
        return Ok(None);
    };
    let m = map_files(
        &file,
        args.network.as_deref(),
        &topology::probe(),
        &SysfsRoot::default(),
    )?;
    m.apply(args, given)?;
    Ok(Some(m))
}

impl Mapping {
    /// Sets `args` as this mapping says: the mode, and each setting the file sets. An error
    /// if the file asks for anything unsupported, or if an option in `given` (ids of options
    /// given on the command line) sets the same thing to something else.
    pub fn apply(&self, args: &mut RunArgs, given: &[String]) -> Result<(), LibvirtError> {
        if !self.unsupported.is_empty() {
            return Err(LibvirtError::Unsupported {
                items: self.unsupported.clone(),
            });
        }
        let s = &self.settings;
        let modes = vec![Selector::One(self.mode)];
        self.check(
            given,
            "modes",
            args.modes == modes,
            || {
                let names: Vec<&str> = args.modes.iter().map(Selector::name).collect();
                format!("--modes {}", names.join(","))
            },
            format!("mode {}", self.mode.name()),
        )?;
        args.modes = modes;
        if let Some(q) = s.queue_size {
            self.check(
                given,
                "queue_size",
                args.queue_size == q,
                || format!("--queue-size {}", args.queue_size),
                format!("queue size {q}"),
            )?;
            args.queue_size = q;
        }
        if let Some(on) = s.event_idx {
            self.check(
                given,
                "event_idx",
                args.event_idx == on,
                || "--no-event-idx".into(),
                format!("event index {}", if on { "on" } else { "off" }),
            )?;
            args.event_idx = on;
        }
        if let Some(on) = s.mrg_rxbuf {
            self.check(
                given,
                "mrg_rxbuf",
                args.mrg_rxbuf == on,
                || "--no-mrg-rxbuf".into(),
                format!("mergeable RX buffers {}", if on { "on" } else { "off" }),
            )?;
            args.mrg_rxbuf = on;
        }
        if let Some(b) = s.vf_backend {
            self.check(
                given,
                "vf_backend",
                args.vf_backend == [b],
                || {
                    let names: Vec<&str> = args.vf_backend.iter().map(|v| v.name()).collect();
                    format!("--vf-backend {}", names.join(","))
                },
                format!("VF backend {}", b.name()),
            )?;
            args.vf_backend = vec![b];
        }
        if let Some(pf) = &s.pf {
            self.check(
                given,
                "pf",
                &args.pf == pf,
                || format!("--pf {}", args.pf),
                format!("the pool of PF {pf}"),
            )?;
            args.pf = pf.clone();
        }
        if let Some(n) = s.vfs {
            self.check(
                given,
                "vfs",
                args.vfs == Some(n),
                || format!("--vfs {}", args.vfs.unwrap_or(0)),
                format!("{n} VFs"),
            )?;
            args.vfs = Some(n);
        }
        Ok(())
    }

    /// An error if option `id` was given and does not `agree` with the file.
    fn check(
        &self,
        given: &[String],
        id: &str,
        agree: bool,
        option: impl FnOnce() -> String,
        xml_says: String,
    ) -> Result<(), LibvirtError> {
        if agree || !given.iter().any(|g| g == id) {
            return Ok(());
        }
        let xml = self
            .origins
            .iter()
            .find(|(k, _)| *k == id)
            .map_or_else(|| "the interface file".to_string(), |(_, v)| v.clone());
        Err(LibvirtError::Conflict {
            option: option(),
            xml,
            xml_says,
        })
    }
}
