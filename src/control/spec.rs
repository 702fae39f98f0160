//! Swarm spec defaults, init-time merging and update-time validation, as SwarmKit applies them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::{Code, ControlError};
use super::types::{ExternalCa, Spec};

/// SwarmKit's `DefaultNodeCertExpiration`: 90 days.
pub const DEFAULT_NODE_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);
/// SwarmKit's `MinNodeCertExpiration`.
pub const MIN_NODE_CERT_EXPIRY: Duration = Duration::from_secs(3600);
/// Bound on what a spec may carry, so one request cannot bloat every later read of the cluster.
const MAX_LABELS: usize = 256;
const MAX_LABEL_BYTES: usize = 4096;
const MAX_EXTERNAL_CAS: usize = 8;
const MAX_URL_LEN: usize = 2048;

/// The spec a new cluster starts with (SwarmKit's `defaultClusterObject`).
pub fn default_spec() -> Spec {
    let mut spec = Spec {
        name: "default".into(),
        labels: Some(BTreeMap::new()),
        ..Spec::default()
    };
    spec.orchestration.task_history_retention_limit = Some(5);
    spec.raft.snapshot_interval = 10_000;
    spec.raft.keep_old_snapshots = Some(0);
    spec.raft.log_entries_for_slow_followers = 500;
    spec.raft.election_tick = 10;
    spec.raft.heartbeat_tick = 1;
    spec.dispatcher.heartbeat_period = 5_000_000_000;
    spec.ca_config.node_cert_expiry = DEFAULT_NODE_CERT_EXPIRY.as_nanos() as i64;
    spec
}

/// `swarm init`: only the fields the request sets override the defaults; external CAs are appended.
pub fn merge_init_spec(req: &Spec, auto_lock: bool) -> Result<Spec, ControlError> {
    check_name(&req.name)?;
    let mut spec = default_spec();
    if let Some(labels) = &req.labels {
        spec.labels = Some(labels.clone());
    }
    if let Some(limit) = req.orchestration.task_history_retention_limit {
        spec.orchestration.task_history_retention_limit = Some(limit);
    }
    let r = &req.raft;
    if r.snapshot_interval != 0 {
        spec.raft.snapshot_interval = r.snapshot_interval;
    }
    if r.keep_old_snapshots.is_some() {
        spec.raft.keep_old_snapshots = r.keep_old_snapshots;
    }
    if r.log_entries_for_slow_followers != 0 {
        spec.raft.log_entries_for_slow_followers = r.log_entries_for_slow_followers;
    }
    if r.election_tick != 0 {
        spec.raft.election_tick = r.election_tick;
    }
    if r.heartbeat_tick != 0 {
        spec.raft.heartbeat_tick = r.heartbeat_tick;
    }
    if req.dispatcher.heartbeat_period != 0 {
        spec.dispatcher.heartbeat_period = req.dispatcher.heartbeat_period;
    }
    if req.ca_config.node_cert_expiry != 0 {
        spec.ca_config.node_cert_expiry = req.ca_config.node_cert_expiry;
    }
    if let Some(cas) = &req.ca_config.external_cas {
        spec.ca_config.external_cas = Some(cas.clone());
    }
    spec.ca_config.force_rotate = req.ca_config.force_rotate;
    spec.ca_config.signing_ca_cert = req.ca_config.signing_ca_cert.clone();
    spec.ca_config.signing_ca_key = req.ca_config.signing_ca_key.clone();
    if req.task_defaults.log_driver.is_some() {
        spec.task_defaults = req.task_defaults.clone();
    }
    spec.encryption_config.auto_lock_managers =
        auto_lock || req.encryption_config.auto_lock_managers;
    validate(&mut spec)?;
    Ok(spec)
}

/// `swarm update`: the request replaces the spec (Docker's `SwarmSpecToGRPC` into an empty spec);
/// only an unset expiry falls back to the default.
pub fn replace_spec(req: &Spec) -> Result<Spec, ControlError> {
    check_name(&req.name)?;
    let mut spec = req.clone();
    spec.name = "default".into();
    if spec.labels.is_none() {
        spec.labels = Some(BTreeMap::new());
    }
    if spec.ca_config.node_cert_expiry == 0 {
        spec.ca_config.node_cert_expiry = DEFAULT_NODE_CERT_EXPIRY.as_nanos() as i64;
    }
    validate(&mut spec)?;
    Ok(spec)
}

fn check_name(name: &str) -> Result<(), ControlError> {
    if name.is_empty() || name == "default" {
        Ok(())
    } else {
        Err(ControlError::InvalidArgument(
            "swarm spec must be named \"default\"".into(),
        ))
    }
}

/// Checks SwarmKit's rules plus swarmguard's size bounds, and normalises external CAs.
fn validate(spec: &mut Spec) -> Result<(), ControlError> {
    let expiry = spec.ca_config.node_cert_expiry;
    if expiry < MIN_NODE_CERT_EXPIRY.as_nanos() as i64 {
        return Err(ControlError::rpc(
            Code::InvalidArgument,
            "minimum certificate expiry time is: 1h0m0s",
        ));
    }
    if spec.dispatcher.heartbeat_period < 0 {
        return Err(ControlError::rpc(
            Code::InvalidArgument,
            "heartbeat period must be positive",
        ));
    }
    if let Some(limit) = spec.orchestration.task_history_retention_limit {
        if limit < 0 {
            return Err(ControlError::rpc(
                Code::InvalidArgument,
                "task history retention limit must not be negative",
            ));
        }
    }
    if let Some(labels) = &spec.labels {
        let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        if labels.len() > MAX_LABELS || bytes > MAX_LABEL_BYTES * 16 {
            return Err(ControlError::InvalidArgument(format!(
                "too many swarm labels: at most {MAX_LABELS} labels and {} bytes are accepted",
                MAX_LABEL_BYTES * 16
            )));
        }
    }
    if let Some(cas) = &mut spec.ca_config.external_cas {
        if cas.len() > MAX_EXTERNAL_CAS {
            return Err(ControlError::InvalidArgument(format!(
                "too many external CAs: at most {MAX_EXTERNAL_CAS} are accepted"
            )));
        }
        for ca in cas.iter_mut() {
            normalize_external_ca(ca)?;
        }
    }
    Ok(())
}

fn normalize_external_ca(ca: &mut ExternalCa) -> Result<(), ControlError> {
    if !ca.protocol.eq_ignore_ascii_case("cfssl") {
        return Err(ControlError::InvalidArgument(format!(
            "invalid protocol: {:?}",
            ca.protocol
        )));
    }
    ca.protocol = "cfssl".into();
    let url = ca.url.as_str();
    if url.len() > MAX_URL_LEN
        || !(url.starts_with("https://") || url.starts_with("http://"))
        || url.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ControlError::InvalidArgument(format!(
            "invalid external CA URL {url:?}: it must be an http:// or https:// URL of at most {MAX_URL_LEN} characters, such as https://ca.example.com:8888/api/v1/cfssl/sign"
        )));
    }
    if !ca.ca_cert.is_empty() && !ca.ca_cert.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ControlError::InvalidArgument(
            "CA cert for external CA must be in PEM format".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_keeps_defaults_and_takes_set_fields() {
        let mut req = Spec::default();
        req.ca_config.node_cert_expiry = 48 * 3600 * 1_000_000_000;
        let spec = merge_init_spec(&req, false).unwrap();
        assert_eq!(spec.name, "default");
        assert_eq!(spec.ca_config.node_cert_expiry, 172_800_000_000_000);
        assert_eq!(spec.raft.election_tick, 10);
        assert_eq!(spec.dispatcher.heartbeat_period, 5_000_000_000);
        assert_eq!(spec.orchestration.task_history_retention_limit, Some(5));
    }

    #[test]
    fn short_expiry_is_refused_with_swarmkit_text() {
        let mut req = default_spec();
        req.ca_config.node_cert_expiry = 30 * 60 * 1_000_000_000;
        let err = replace_spec(&req).unwrap_err();
        assert_eq!(err.http_status(), 400);
        assert_eq!(
            err.to_string(),
            "rpc error: code = InvalidArgument desc = minimum certificate expiry time is: 1h0m0s"
        );
        req.ca_config.node_cert_expiry = -1;
        assert!(replace_spec(&req).is_err());
    }

    #[test]
    fn unset_expiry_on_update_means_default() {
        let mut req = default_spec();
        req.ca_config.node_cert_expiry = 0;
        let spec = replace_spec(&req).unwrap();
        assert_eq!(spec.ca_config.node_cert_expiry, 7_776_000_000_000_000);
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut named = default_spec();
        named.name = "other".into();
        assert_eq!(
            replace_spec(&named).unwrap_err().to_string(),
            "swarm spec must be named \"default\""
        );

        let mut proto = default_spec();
        proto.ca_config.external_cas = Some(vec![ExternalCa {
            protocol: "acme".into(),
            url: "https://x".into(),
            ..Default::default()
        }]);
        assert_eq!(
            replace_spec(&proto).unwrap_err().to_string(),
            "invalid protocol: \"acme\""
        );

        let mut url = default_spec();
        url.ca_config.external_cas = Some(vec![ExternalCa {
            protocol: "CFSSL".into(),
            url: "ftp://x".into(),
            ..Default::default()
        }]);
        assert!(replace_spec(&url)
            .unwrap_err()
            .to_string()
            .contains("invalid external CA URL"));

        let mut ok = default_spec();
        ok.ca_config.external_cas = Some(vec![ExternalCa {
            protocol: "CFSSL".into(),
            url: "https://ca:8888/api/v1/cfssl/sign".into(),
            ..Default::default()
        }]);
        let spec = replace_spec(&ok).unwrap();
        assert_eq!(spec.ca_config.external_cas.unwrap()[0].protocol, "cfssl");

        let mut labels = default_spec();
        labels.labels = Some((0..300).map(|i| (i.to_string(), String::new())).collect());
        assert!(replace_spec(&labels)
            .unwrap_err()
            .to_string()
            .contains("too many swarm labels"));
    }
}
