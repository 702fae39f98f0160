//! Root CA rotation (`docker swarm ca --rotate`), in SwarmKit's three phases.
//!
//! 1. [`Control::start_rotation`] (inside `swarm update`): a new root, the same certificate
//!    cross-signed by the current root, and the new key go to the store in one write; the
//!    trusted root and the join tokens stay as they are.
//! 2. While the record says a rotation runs, [`super::security::Security`] trusts both roots
//!    and signs with the new key ([`RotatingCa`]), handing out `[leaf][cross-signed root]` so
//!    nodes that still trust only the old root accept every new certificate. [`reconcile`]
//!    (leader only) marks nodes whose reported issuer is not yet the new root ROTATE, 30 every
//!    3 s; they renew over mTLS and report their new issuer when their session restarts.
//! 3. When every node reports the new issuer, one write makes the new root the only one,
//!    draws new join tokens (new digest) and drops the old key; sessions carry the new root.
//!
//! Everything is in the store, so a manager killed mid-way picks the rotation up where the
//! store says it is.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use swarmguard_ca::{JoinToken, RootCa};
use tokio::sync::watch;
use zeroize::{Zeroize, Zeroizing};

use super::local;
use super::security::{load_root_record, Material};
use crate::control::error::{Code, ControlError};
use crate::control::records::{
    self, node_key, CertState, ClusterRecord, NodeRecord, RootCaRecord, RootRotation, CLUSTER_KEY,
    NODE_PREFIX, ROOT_CA_KEY,
};
use crate::control::types::Role;
use crate::control::Control;
use crate::store::{Check, Op, Txn, TxnOutcome};

/// SwarmKit's `IssuanceStateRotateMaxBatchSize`.
const ROTATE_BATCH: usize = 30;
/// SwarmKit's `defaultRootReconciliationInterval`.
const RECONCILE_EVERY: Duration = Duration::from_secs(3);

/// What a `swarm update` asks of the root (SwarmKit's `validateCAConfig`).
pub(crate) enum RootChange {
    Keep,
    /// `--ca-cert` is the current root: a rotation in progress stops.
    Abort,
    /// A new root: created here (`--rotate`) or the operator's (`--ca-cert/--ca-key`).
    Start(Option<Box<RootCa>>),
}

/// Why a swarm whose root key an external CA holds cannot rotate its root, and what to do.
pub(crate) const EXTERNAL_ROOT_ROTATION: &str = "cannot rotate the root CA of a swarm whose root key is held by an external CA: that CA would have to cross-sign the new root (so that nodes keep trusting each other during the rotation), and this swarmguard version cannot ask it to yet. Nothing was changed. To move away from the external root, create a new swarm with the new root (docker swarm init, with --external-ca if an external CA holds it) and join the nodes to it";

/// A root the operator brings must stay valid this long (SwarmKit: one year).
const MIN_NEW_ROOT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Reads the signing CA from the request's spec (and removes it: the key never sits in the
/// cluster record) and decides what happens to the root, with SwarmKit's texts on refusal.
pub(crate) fn root_change(
    material: &Material,
    record: &ClusterRecord,
    spec: &mut crate::control::types::Spec,
) -> Result<RootChange, ControlError> {
    let cert = std::mem::take(&mut spec.ca_config.signing_ca_cert);
    let key = Zeroizing::new(std::mem::take(&mut spec.ca_config.signing_ca_key));
    let forced = spec.ca_config.force_rotate != record.last_forced_rotation;
    let invalid = |m: &str| ControlError::InvalidArgument(m.to_string());
    if cert.is_empty() {
        if !key.is_empty() {
            return Err(invalid(
                "if a signing CA key is provided, the signing CA cert must also be provided",
            ));
        }
        return Ok(if forced {
            RootChange::Start(None)
        } else {
            RootChange::Keep
        });
    }
    let ders = crate::tls::certs_from_pem(cert.as_bytes(), "signing CA certificate")
        .map_err(|e| invalid(&format!("invalid signing CA certificate: {e}")))?;
    if ders.len() > 1 {
        return Err(invalid(
            "the desired CA certificate cannot contain multiple certificates",
        ));
    }
    let same = |pem: &[u8]| {
        crate::tls::certs_from_pem(pem, "root").is_ok_and(|d| d.len() == 1 && d[0] == ders[0])
    };
    if same(material.root.cert_pem()) {
        return Ok(RootChange::Abort);
    }
    let target = record.root_rotation.as_ref();
    if !forced && target.is_some_and(|t| same(t.new_root_pem.as_bytes())) {
        return Ok(RootChange::Keep);
    }
    let new = if key.is_empty() {
        // Moving to an external CA: it holds the key, and the spec must name it.
        let new = RootCa::from_cert_pem(cert.as_bytes())
            .map_err(|e| invalid(&format!("invalid signing CA certificate: {e}")))?;
        let new = std::sync::Arc::new(new);
        super::external::check_update(spec, &new)?;
        std::sync::Arc::try_unwrap(new).map_err(|_| invalid("signing CA certificate"))?
    } else {
        RootCa::from_pem(cert.as_bytes(), key.as_bytes())
            .map_err(|e| invalid(&format!("invalid signing CA certificate or key: {e}")))?
    };
    if new.not_after() < std::time::SystemTime::now() + MIN_NEW_ROOT_VALIDITY {
        return Err(invalid("CA certificate expires too soon"));
    }
    if new.spki_der() == material.root.spki_der() {
        return Err(invalid("Cannot update to a cert with an identical key"));
    }
    Ok(RootChange::Start(Some(Box::new(new))))
}

impl Control {
    /// Phase 1, as part of `swarm update`: adds to `record` the new root (`new`, else a fresh
    /// internal one) cross-signed by the current root and returns the `ca/root` write (with its
    /// version check) that stores the new key. A rotation already running is replaced
    /// (SwarmKit restarts it the same way).
    pub(crate) fn start_rotation(
        &self,
        material: &Material,
        record: &mut ClusterRecord,
        new: Option<Box<RootCa>>,
    ) -> Result<(Check, Op), ControlError> {
        if !material.root.has_key() {
            // SwarmKit asks the external CA to cross-sign the new root (a CA profile in
            // cfssl); without that signature nodes on the old root could not trust the new one.
            return Err(ControlError::rpc(
                Code::Unimplemented,
                EXTERNAL_ROOT_ROTATION,
            ));
        }
        let new = match new {
            Some(n) => *n,
            None => RootCa::create()
                .map_err(|e| ControlError::internal("cannot create the new root CA", e))?,
        };
        let cross = material.root.cross_sign(&new).map_err(|e| {
            ControlError::InvalidArgument(format!("cannot cross-sign the new root CA: {e}"))
        })?;
        let (mut root_record, version) = load_root_record(&self.store)?;
        // Empty when an external CA holds the new root's key.
        root_record.rotation_key_pkcs8_b64 = new
            .key_pkcs8_der()
            .map(|k| B64.encode(k.as_slice()))
            .unwrap_or_default();
        record.root_rotation = Some(RootRotation {
            new_root_pem: String::from_utf8_lossy(new.cert_pem()).into_owned(),
            cross_signed_pem: String::from_utf8_lossy(&cross).into_owned(),
        });
        root_record_write(&root_record, version)
    }

    /// Stops a rotation in progress (`--ca-cert` with the current root): the target and its
    /// key go; certificates already issued from it still chain to the current root through
    /// the cross-signed certificate until they are renewed.
    pub(crate) fn abort_rotation(
        &self,
        record: &mut ClusterRecord,
    ) -> Result<Option<(Check, Op)>, ControlError> {
        if record.root_rotation.take().is_none() {
            return Ok(None);
        }
        let (mut root_record, version) = load_root_record(&self.store)?;
        root_record.rotation_key_pkcs8_b64.zeroize();
        root_record.rotation_key_pkcs8_b64.clear();
        root_record_write(&root_record, version).map(Some)
    }

    /// One step of phases 2 and 3; the leader calls it every few seconds.
    pub async fn rotation_step(&self) -> Result<(), ControlError> {
        let cluster = self.cluster()?;
        let Some(wanted) = cluster.record.root_rotation.clone() else {
            return Ok(());
        };
        let Some(material) = self.security.current() else {
            return Ok(());
        };
        // The material follows the store through the port supervisor; wait for it.
        let Some(rotation) = material.rotation.clone().filter(|r| {
            r.new_root.cert_pem() == wanted.new_root_pem.as_bytes()
                && r.cross_signed_pem == wanted.cross_signed_pem.as_bytes()
        }) else {
            return Ok(());
        };
        let target = local::tls_info(&rotation.new_root);
        let nodes = records::list::<NodeRecord>(&self.store, NODE_PREFIX)?;
        let behind: Vec<NodeRecord> = nodes
            .into_iter()
            .map(|s| s.record)
            // A node that never reported its TLS info (joined, no session yet) is not waited
            // for, as SwarmKit's reconciler ignores it: it could never report convergence.
            // Managers are always waited for: once the rotation ends each trusts only the new
            // root, so one left with an old-root certificate would be cut off the Raft group.
            .filter(|n| {
                n.role == Role::Manager || !n.description.tls_info.cert_issuer_public_key.is_empty()
            })
            .filter(|n| {
                n.description.tls_info.cert_issuer_subject != target.cert_issuer_subject
                    || n.description.tls_info.cert_issuer_public_key
                        != target.cert_issuer_public_key
            })
            .collect();
        if behind.is_empty() {
            return self.finish_rotation(&cluster, &wanted).await;
        }
        let me = material.identity.node_id.clone();
        if behind.iter().any(|n| n.id == me) {
            self.renew_own_certificate().await?;
        }
        let to_mark = behind
            .iter()
            .filter(|n| n.id != me && n.certificate.state == CertState::Issued)
            .take(ROTATE_BATCH);
        for n in to_mark {
            records::update(
                &self.store,
                &node_key(&n.id),
                "node",
                |r: &mut NodeRecord| {
                    if r.certificate.state == CertState::Issued {
                        r.certificate.state = CertState::Rotate;
                    }
                    Ok(())
                },
            )
            .await?;
        }
        tracing::info!(
            unconverged = behind.len(),
            "root rotation: waiting for nodes to hold a certificate from the new root"
        );
        Ok(())
    }

    /// Phase 3: the new root becomes the only one, with new join tokens; the old key goes.
    async fn finish_rotation(
        &self,
        cluster: &crate::control::ClusterView,
        wanted: &RootRotation,
    ) -> Result<(), ControlError> {
        let (old, root_version) = load_root_record(&self.store)?;
        let new_root_record = RootCaRecord {
            cert_pem: wanted.new_root_pem.clone(),
            key_pkcs8_b64: old.rotation_key_pkcs8_b64.clone(),
            rotation_key_pkcs8_b64: String::new(),
        };
        drop(old);
        let mut record = cluster.record.clone();
        let root_pem = wanted.new_root_pem.as_bytes();
        record.root_ca_pem = wanted.new_root_pem.clone();
        record.join_tokens.worker = JoinToken::generate(root_pem).to_string();
        record.join_tokens.manager = JoinToken::generate(root_pem).to_string();
        record.root_rotation = None;
        record.updated_at = crate::util::now_rfc3339();
        let txn = Txn {
            checks: vec![
                Check::Version {
                    key: CLUSTER_KEY.into(),
                    version: cluster.version,
                },
                Check::Version {
                    key: ROOT_CA_KEY.into(),
                    version: root_version,
                },
            ],
            ops: vec![
                records::put(CLUSTER_KEY, &record)?,
                Op::Put {
                    key: ROOT_CA_KEY.into(),
                    value: Zeroizing::new(records::encode(&new_root_record)?).to_vec(),
                },
            ],
        };
        if let TxnOutcome::Conflict { .. } = self.apply(txn).await? {
            // Someone changed the cluster meanwhile (another `--rotate`?): look again later.
            return Ok(());
        }
        tracing::info!(
            "root rotation finished: the new root is the only trusted one, join tokens replaced"
        );
        // This manager now trusts only the new root; its description says so.
        if let Some(m) = self.security.current() {
            let new_root = RootCa::from_cert_pem(root_pem)
                .map_err(|e| ControlError::internal("cannot read the new root", e))?;
            self.record_tls_info(&m.identity.node_id, local::tls_info(&new_root))
                .await?;
        }
        Ok(())
    }
}

/// The root CA record written back, guarded by the version it was read at.
fn root_record_write(record: &RootCaRecord, version: u64) -> Result<(Check, Op), ControlError> {
    let op = Op::Put {
        key: ROOT_CA_KEY.into(),
        value: Zeroizing::new(records::encode(record)?).to_vec(),
    };
    let check = Check::Version {
        key: ROOT_CA_KEY.into(),
        version,
    };
    Ok((check, op))
}

/// Drives phases 2 and 3 on the leader until `stop`.
pub async fn reconcile(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    // A fixed period, as SwarmKit's ticker: a step's own writes (up to 30 of them) do not
    // stretch the time between batches.
    let mut every = tokio::time::interval(RECONCILE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = crate::util::until_true(&mut stop) => return,
            _ = every.tick() => {}
        }
        if !control.store().is_leader() {
            continue;
        }
        if let Err(e) = control.rotation_step().await {
            tracing::warn!(error = %e, "root rotation step failed; trying again");
        }
    }
}
