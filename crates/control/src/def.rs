//! A domain definition as the control plane takes it and keeps it: a [`vmm::DomainSpec`] (the
//! same one `vessel run`'s flags make) that has a name and passed [`vmm::DomainSpec::validate`].
//! Its JSON is the spec's: `vessel run`'s flags as fields, unknown fields refused. Whatever is
//! wrong with one is [`ControlError::Invalid`], with a message that says what.

use serde::Serialize;
use vmm::DomainSpec;

use crate::ControlError;

/// A named, valid domain specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DomainDef(DomainSpec);

/// Parses a specification from JSON, with a message that says what is wrong.
pub fn spec_from_json(bytes: &[u8]) -> Result<DomainSpec, ControlError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ControlError::Invalid(format!("invalid domain definition: {e}")))
}

impl DomainDef {
    /// `spec` as a definition, if it has a name and is valid: every check that needs neither
    /// the host's files nor KVM.
    pub fn new(spec: DomainSpec) -> Result<DomainDef, ControlError> {
        if spec.name.is_none() {
            return Err(ControlError::Invalid(
                "invalid domain definition: missing field `name`".into(),
            ));
        }
        spec.validate().map_err(invalid)?;
        Ok(DomainDef(spec))
    }

    /// Parses and checks a definition from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<DomainDef, ControlError> {
        DomainDef::new(spec_from_json(bytes)?)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.0.name.as_deref().unwrap_or_default()
    }

    /// Its specification.
    pub fn spec(&self) -> &DomainSpec {
        &self.0
    }

    /// This definition with its scheduling parameters changed by `change` (checked).
    pub fn with_sched(&self, change: &vmm::SchedChange) -> Result<DomainDef, ControlError> {
        self.changed(|spec| spec.sched = spec.sched.with(change))
    }

    /// This definition as `change` leaves a copy of its specification (checked).
    pub fn changed(&self, change: impl FnOnce(&mut DomainSpec)) -> Result<DomainDef, ControlError> {
        let mut spec = self.0.clone();
        change(&mut spec);
        DomainDef::new(spec)
    }

    /// Records the format of every disk given without `format=`, found from the file's first
    /// bytes: once, when the domain is defined, so that no later boot, restart or daemon
    /// restart guesses a format from bytes its guest may have written.
    pub fn pin_disk_formats(&mut self) -> Result<(), ControlError> {
        vmm::pin_disk_formats(&mut self.0).map_err(invalid)
    }

    /// What the daemon checks before it stores a definition beyond [`DomainDef::new`]: the
    /// memory against the host's RAM. (Files and KVM's vCPU limit are checked when the domain
    /// starts.)
    pub fn check_to_store(&self) -> Result<(), ControlError> {
        vmm::check_host_memory(self.0.memory).map_err(invalid)
    }
}

fn invalid(e: impl std::fmt::Display) -> ControlError {
    ControlError::Invalid(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_needs_a_name_and_a_valid_spec() {
        let def = DomainDef::from_json(br#"{"name":"web-1","kernel":"/k"}"#).unwrap();
        assert_eq!(def.name(), "web-1");
        assert_eq!(def.spec().memory, 256 << 20, "the defaults of `vessel run`");
        let again = DomainDef::from_json(&serde_json::to_vec(&def).unwrap()).unwrap();
        assert_eq!(again, def);
        for (json, says) in [
            (
                r#"{"kernel":"/k"}"#,
                "invalid domain definition: missing field `name`",
            ),
            (
                r#"{"name":"a"}"#,
                "invalid domain definition: missing field `kernel`",
            ),
            (
                r#"{"name":"a/b","kernel":"/k"}"#,
                "invalid domain name 'a/b'",
            ),
            (
                r#"{"name":"a","kernel":"/k","vcpus":0}"#,
                "--vcpus must be at least 1",
            ),
            (
                r#"{"name":"a","kernel":"/k","colour":"red"}"#,
                "invalid domain definition: unknown field `colour`",
            ),
            (r#"{"name":"a","#, "invalid domain definition"),
        ] {
            let err = DomainDef::from_json(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn disk_formats_are_found_once_and_recorded() {
        let dir = std::env::temp_dir().join(format!("vessel-def-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("a.img");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let q = dir.join("b.qcow2");
        devices::image::qcow2::create(&q, Some(1 << 20), None).unwrap();
        let json = format!(
            r#"{{"name":"d","kernel":"/k","disk":["path={},id=root","path={},readonly=on","path={},format=raw,readonly=on","path={},readonly=on,iops=5"]}}"#,
            raw.display(),
            q.display(),
            q.display(),
            q.display()
        );
        let mut def = DomainDef::from_json(json.as_bytes()).unwrap();
        def.pin_disk_formats().unwrap();
        let stored = serde_json::to_value(&def).unwrap();
        assert_eq!(
            stored["disk"],
            serde_json::json!([
                format!("path={},format=raw,id=root", raw.display()),
                format!("path={},format=qcow2,readonly=on", q.display()),
                format!("path={},format=raw,readonly=on", q.display()),
                format!("path={},format=qcow2,readonly=on,iops=5", q.display()),
            ]),
            "the format found, and one given, are in the stored strings"
        );
        let mut missing = DomainDef::from_json(
            format!(
                r#"{{"name":"e","kernel":"/k","disk":["path={}/nope"]}}"#,
                dir.display()
            )
            .as_bytes(),
        )
        .unwrap();
        let err = missing.pin_disk_formats().unwrap_err().to_string();
        assert!(
            err.contains("--disk disk0") && err.contains("nope"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_beyond_the_host_is_refused_before_it_is_stored() {
        let def = DomainDef::from_json(br#"{"name":"a","kernel":"/k","memory":"100000G"}"#)
            .expect("well formed, and within every limit that does not depend on the host");
        let err = def.check_to_store().unwrap_err().to_string();
        assert!(err.contains("more than this host's"), "{err}");
        let fine = DomainDef::from_json(br#"{"name":"a","kernel":"/k","memory":"16M"}"#).unwrap();
        assert!(fine.check_to_store().is_ok());
    }
}
