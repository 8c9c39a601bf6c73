//! The capability sets of a container process (OCI `process.capabilities`), applied with the
//! `caps` crate in the init process.
//!
//! Order, as runc: [`drop_bounding`] while still root (it needs CAP_SETPCAP), then the uid/gid
//! switch with `PR_SET_KEEPCAPS`, then [`apply`] sets effective, permitted, inheritable and
//! ambient. A process with no `capabilities` object gets none at all.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

/// Errors applying capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// The spec names a capability this agent does not know.
    #[error("unknown capability {0:?}")]
    Unknown(String),
    /// A capset/prctl call failed.
    #[error("setting the {set} capability set: {source}")]
    Apply {
        /// Which set.
        set: &'static str,
        /// What the caps crate said.
        source: caps::errors::CapsError,
    },
}

/// The five sets, converted to the caps crate's type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CapabilitySets {
    /// Bounding set.
    pub bounding: CapsHashSet,
    /// Effective set.
    pub effective: CapsHashSet,
    /// Permitted set.
    pub permitted: CapsHashSet,
    /// Inheritable set.
    pub inheritable: CapsHashSet,
    /// Ambient set.
    pub ambient: CapsHashSet,
}

impl CapabilitySets {
    /// Converts the spec's sets; a missing object or set means empty.
    pub fn from_spec(spec: Option<&LinuxCapabilities>) -> Result<Self, CapsError> {
        let Some(spec) = spec else {
            return Ok(Self::default());
        };
        Ok(CapabilitySets {
            bounding: convert(spec.bounding().as_ref())?,
            effective: convert(spec.effective().as_ref())?,
            permitted: convert(spec.permitted().as_ref())?,
            inheritable: convert(spec.inheritable().as_ref())?,
            ambient: convert(spec.ambient().as_ref())?,
        })
    }
}

fn convert(set: Option<&Capabilities>) -> Result<CapsHashSet, CapsError> {
    let mut out = CapsHashSet::new();
    for cap in set.into_iter().flatten() {
        // oci-spec serializes capabilities as "CAP_CHOWN", the name the caps crate parses.
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{cap:?}"));
        out.insert(Capability::from_str(&name).map_err(|_| CapsError::Unknown(name))?);
    }
    Ok(out)
}

/// Drops from the bounding set every capability the kernel supports that `keep` lacks.
pub fn drop_bounding(keep: &CapsHashSet) -> Result<(), CapsError> {
    let supported = caps::runtime::thread_all_supported();
    for cap in supported.difference(keep) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(|source| CapsError::Apply {
            set: "bounding",
            source,
        })?;
    }
    Ok(())
}

/// Sets the effective, permitted, inheritable and ambient sets (after the uid switch).
pub fn apply(sets: &CapabilitySets) -> Result<(), CapsError> {
    let supported = caps::runtime::thread_all_supported();
    let known = |s: &CapsHashSet| -> CapsHashSet { s.intersection(&supported).copied().collect() };
    // The caps crate changes one set per capset(2) call, and every call must leave effective
    // within permitted: so effective shrinks first, permitted last.
    let set = |name: &'static str, cset: CapSet, value: &CapsHashSet| {
        caps::set(None, cset, value).map_err(|source| {
            let now = |c| caps::read(None, c).map(|s| s.len()).unwrap_or(0);
            CapsError::Apply {
                set: name,
                source: format!(
                    "{source} (asked {} caps; now effective {}, permitted {}, inheritable {})",
                    value.len(),
                    now(CapSet::Effective),
                    now(CapSet::Permitted),
                    now(CapSet::Inheritable)
                )
                .into(),
            }
        })
    };
    set("effective", CapSet::Effective, &known(&sets.effective))?;
    set(
        "inheritable",
        CapSet::Inheritable,
        &known(&sets.inheritable),
    )?;
    set("permitted", CapSet::Permitted, &known(&sets.permitted))?;
    caps::clear(None, CapSet::Ambient).map_err(|source| CapsError::Apply {
        set: "ambient",
        source,
    })?;
    for cap in known(&sets.ambient) {
        // Raising an ambient capability needs it in permitted and inheritable; runc ignores
        // failures here, so does moat (the process simply does not get it).
        if let Err(e) = caps::raise(None, CapSet::Ambient, cap) {
            tracing::debug!("ambient {cap}: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_sets_convert_and_missing_means_empty() {
        let spec: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}"#,
        )
        .unwrap();
        let sets = CapabilitySets::from_spec(Some(&spec)).unwrap();
        assert_eq!(sets.bounding.len(), 2);
        assert!(sets.effective.contains(&Capability::CAP_KILL));
        assert!(sets.ambient.is_empty() && sets.inheritable.is_empty());
        assert_eq!(
            CapabilitySets::from_spec(None).unwrap(),
            CapabilitySets::default()
        );
    }

    #[test]
    fn unknown_names_fail_at_parse_time() {
        assert!(serde_json::from_str::<LinuxCapabilities>(r#"{"bounding":["CAP_NOPE"]}"#).is_err());
    }
}
