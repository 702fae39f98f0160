//! The swarm itself: `swarm init`, `swarm update` (spec and token rotation), `swarm leave`.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use swarmguard_ca::{IssuedCertificate, JoinToken, NodeRole, RootCa};
use zeroize::Zeroizing;

use super::audit::AuditEvent;
use super::ca::external;
use super::ca::local::{self, LocalIdentity};
use super::ca::rotation::{self, RootChange};
use super::ca::security::Security;
use super::error::{Code, ControlError};
use super::records::{
    self, node_key, CertState, CertificateRecord, ClusterRecord, NodeRecord, NodeSoftware,
    RootCaRecord, TokenPair, CLUSTER_KEY, NODE_PREFIX, ROOT_CA_KEY,
};
use super::types::{Availability, NodeSpec, NodeState, NodeStatus, Role, Spec};
use super::{out_of_sequence, spec, ClusterPort, Control, Rotate};
use crate::store::{Check, Op, Txn, TxnOutcome};
use crate::util::{now_rfc3339, unix_seconds};

/// What `swarm init` asks for, parsed (the Engine API's `InitRequest`).
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub listen_addr: String,
    pub advertise_addr: String,
    pub data_path_port: u32,
    pub force_new_cluster: bool,
    pub spec: Spec,
    pub auto_lock_managers: bool,
    /// Empty means active.
    pub availability: String,
    pub default_addr_pool: Option<Vec<String>>,
    pub subnet_size: u32,
}

/// A new cluster's root, IDs and this manager's first certificate, made before anything is
/// written.
struct NewCluster {
    ca: RootCa,
    cluster_id: String,
    node_id: String,
    node_key_pem: Zeroizing<Vec<u8>>,
    issued: IssuedCertificate,
}

impl Control {
    /// `POST /swarm/init`: creates the root CA, the cluster, its tokens and this manager's node
    /// with a manager certificate from the new CA; returns the node ID.
    pub async fn init(&self, req: &InitOptions) -> Result<String, ControlError> {
        let _one_at_a_time = self.membership.lock().await;
        if self.store.get(CLUSTER_KEY).is_some() && req.force_new_cluster {
            return Err(ControlError::InvalidArgument(
                "swarmguard recovers a swarm at start-up: stop this manager and start it again with `swarmguard manager --force-new-cluster`".into(),
            ));
        }
        if self.store.get(CLUSTER_KEY).is_some() {
            return Err(ControlError::AlreadyInSwarm);
        }
        if req.force_new_cluster {
            return Err(ControlError::InvalidArgument(
                "--force-new-cluster is not supported: this manager is not part of a swarm, so there is nothing to recover".into(),
            ));
        }
        let spec = spec::merge_init_spec(&req.spec, req.auto_lock_managers)?;
        refuse_unsupported(&spec)?;
        let availability = match req.availability.as_str() {
            "" => Availability::Active,
            a => Availability::parse(a)?,
        };
        let (listen, advertise) = self
            .config
            .resolve_addrs(&req.listen_addr, &req.advertise_addr)?;
        let new = new_cluster(&spec).await?;
        let cluster = cluster_record(&new, spec, req);
        let node = own_node_record(&new, availability, advertise, self.store.node_id());

        // The identity goes to disk first: a crash before the commit leaves files the next init
        // overwrites, while a commit without files would leave a cluster nobody can serve.
        let identity = LocalIdentity::write(
            &self.config.data_dir,
            &self.key_codec(),
            new.ca.cert_pem(),
            &new.issued.cert_pem,
            &new.node_key_pem,
            &new.node_id,
            listen,
            advertise,
        )
        .map_err(|e| ControlError::internal("cannot write this manager's certificate", e))?;
        // A manager started without a raft group gets a one-voter group here, reachable at
        // the address other managers will dial.
        self.store
            .bootstrap(&advertise.to_string(), std::time::Duration::from_secs(15))
            .await
            .map_err(|e| ControlError::Store(e.to_string()))?;
        self.commit_new_cluster(&cluster, &new, &node).await?;
        let (cluster_id, node_id) = (new.cluster_id.clone(), new.node_id.clone());
        let cert_pem = new.issued.cert_pem.clone();
        let material = Security::build(
            cluster_id.clone(),
            identity,
            Arc::new(new.ca),
            cert_pem,
            &new.node_key_pem,
            &cluster.spec,
        )?;
        // Whatever the port did before belongs to an earlier membership. Reset before the
        // material is installed: from then on the supervisor may start the port at any moment,
        // and a reset after it would hide that it serves (init would wait for it in vain).
        self.set_cluster_port(ClusterPort::Stopped);
        self.security.install(material);
        // `--autolock`: record the swarm's unlock key and wrap the data key under it before
        // the answer, after which the CLI shows the key.
        self.sync_unlock_key_record(false).await?;
        self.reconcile_autolock()?;
        self.membership_changed.notify_one();
        tracing::info!(cluster_id = %cluster_id, node_id = %node_id, "swarm initialized");
        Ok(node_id)
    }

    /// The one write that creates a cluster: its record, the root key and this manager's node.
    async fn commit_new_cluster(
        &self,
        cluster: &ClusterRecord,
        new: &NewCluster,
        node: &NodeRecord,
    ) -> Result<(), ControlError> {
        let root_record = RootCaRecord {
            cert_pem: cluster.root_ca_pem.clone(),
            // Empty when an external CA holds the key: the manager never has it.
            key_pkcs8_b64: new
                .ca
                .key_pkcs8_der()
                .map(|k| B64.encode(k.as_slice()))
                .unwrap_or_default(),
            rotation_key_pkcs8_b64: String::new(),
        };
        let txn = Txn {
            checks: vec![Check::Absent {
                key: CLUSTER_KEY.into(),
            }],
            ops: vec![
                records::put(CLUSTER_KEY, cluster)?,
                Op::Put {
                    key: ROOT_CA_KEY.into(),
                    value: Zeroizing::new(records::encode(&root_record)?).to_vec(),
                },
                records::put(&node_key(&new.node_id), node)?,
            ],
        };
        match self.apply(txn).await? {
            TxnOutcome::Committed { .. } => Ok(()),
            TxnOutcome::Conflict { .. } => Err(ControlError::AlreadyInSwarm),
        }
    }

    /// `POST /swarm/update`: replaces the spec and rotates tokens, if `version` is current.
    pub async fn update_swarm(
        &self,
        version: u64,
        req: &Spec,
        rotate: Rotate,
    ) -> Result<(), ControlError> {
        let current = self.cluster()?;
        if current.version != version {
            return Err(out_of_sequence());
        }
        let mut spec = spec::replace_spec(req)?;
        if rotate.manager_unlock_key && !spec.encryption_config.auto_lock_managers {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                "cannot rotate the unlock key: autolock is not turned on",
            ));
        }
        let material = self.security.current().ok_or(ControlError::NotManager)?;
        external::check_update(&spec, &material.root)?;
        let mut record = current.record.clone();
        let change = rotation::root_change(&material, &record, &mut spec)?;
        let rotate_root = matches!(change, RootChange::Start(_));
        let mut checks = vec![Check::Version {
            key: CLUSTER_KEY.into(),
            version,
        }];
        let mut ops = vec![];
        let root_write = match change {
            RootChange::Keep => None,
            RootChange::Abort => self.abort_rotation(&mut record)?,
            RootChange::Start(new) => Some(self.start_rotation(&material, &mut record, new)?),
        };
        if let Some((check, op)) = root_write {
            checks.push(check);
            ops.push(op);
        }
        record.last_forced_rotation = spec.ca_config.force_rotate;
        record.spec = spec;
        if rotate.worker_token {
            record.join_tokens.worker = JoinToken::generate(&material.root_pem).to_string();
        }
        if rotate.manager_token {
            record.join_tokens.manager = JoinToken::generate(&material.root_pem).to_string();
        }
        record.updated_at = now_rfc3339();
        ops.push(records::put(CLUSTER_KEY, &record)?);
        let txn = Txn { checks, ops };
        match self.apply(txn).await? {
            TxnOutcome::Committed { .. } => {
                if rotate_root {
                    tracing::info!("root CA rotation started: nodes are re-issued certificates from the new root");
                }
                // The material the committed record asks for, before the answer: `GET /swarm`
                // reads its TLSInfo, and the supervisor's next refresh may come later (it
                // still swaps the cluster port's config, comparing by pointer).
                if let Err(e) = self.security.refresh(&self.store, &self.config.data_dir) {
                    tracing::warn!(error = %e, "cannot refresh the security material after a swarm update");
                }
                self.sync_unlock_key_record(rotate.manager_unlock_key)
                    .await?;
                self.reconcile_autolock()?;
                if rotate.worker_token || rotate.manager_token {
                    tracing::info!(
                        worker = rotate.worker_token,
                        manager = rotate.manager_token,
                        "join token rotated; the old token is refused from now on"
                    );
                }
                for (rotated, role) in [
                    (rotate.worker_token, "worker"),
                    (rotate.manager_token, "manager"),
                ] {
                    if rotated {
                        self.audit
                            .record(AuditEvent::TokenRotated { role: role.into() });
                    }
                }
                Ok(())
            }
            TxnOutcome::Conflict { .. } => Err(out_of_sequence()),
        }
    }

    /// `POST /swarm/leave`: a manager leaving erases the cluster, so it needs `force`.
    pub async fn leave(&self, force: bool) -> Result<(), ControlError> {
        let _one_at_a_time = self.membership.lock().await;
        if self.store.get(CLUSTER_KEY).is_none() {
            return Err(ControlError::NotInSwarm);
        }
        if self.store.member_addrs().len() > 1 {
            return self.leave_group(force).await;
        }
        if !force {
            return Err(ControlError::Unavailable(
                "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ".into(),
            ));
        }
        let mut ops: Vec<Op> = vec![
            Op::Delete {
                key: CLUSTER_KEY.into(),
            },
            Op::Delete {
                key: ROOT_CA_KEY.into(),
            },
        ];
        for (key, _) in self.store.list(NODE_PREFIX) {
            ops.push(Op::Delete { key });
        }
        // Secrets belong to the swarm and go with it (dockerd removes the whole Raft state).
        for prefix in [
            super::secrets::SECRET_PREFIX,
            super::secrets::SECRET_NAME_PREFIX,
            super::secrets::SECRET_REF_PREFIX,
        ] {
            for (key, _) in self.store.list(prefix) {
                ops.push(Op::Delete { key });
            }
        }
        for key in [
            super::secrets::SECRETS_KEY,
            super::ca::autolock::UNLOCK_KEY_RECORD,
        ] {
            if self.store.get(key).is_some() {
                ops.push(Op::Delete { key: key.into() });
            }
        }
        self.apply(Txn {
            checks: vec![],
            ops,
        })
        .await?;
        self.security.clear();
        // No swarm, no autolock: the data key file goes back to clear.
        self.reconcile_autolock()?;
        self.membership_changed.notify_one();
        LocalIdentity::remove(&self.config.data_dir)
            .map_err(|e| ControlError::internal("cannot remove this manager's certificate", e))?;
        tracing::info!("left the swarm; cluster state erased");
        Ok(())
    }
}

/// The root CA, the IDs and this manager's certificate for a new cluster. With cfssl external
/// CAs in the spec, the root is the external CA's certificate (no key here) and this manager's
/// certificate is signed by cfssl like every other node's.
async fn new_cluster(spec: &Spec) -> Result<NewCluster, ControlError> {
    let external = external::learn_root(spec).await?;
    let cluster_id = swarmguard_ca::new_id();
    let node_id = swarmguard_ca::new_id();
    let expiry = std::time::Duration::from_nanos(spec.ca_config.node_cert_expiry as u64);
    let (node_key_pem, csr) = swarmguard_ca::generate_node_key_and_csr();
    let checked = swarmguard_ca::check_csr(&csr)
        .map_err(|e| ControlError::internal("this manager's own CSR", e))?;
    let (ca, issued) = match external {
        None => {
            let ca = RootCa::create()
                .map_err(|e| ControlError::internal("cannot create the root CA", e))?;
            let issued = ca
                .issue_node_certificate(&checked, &node_id, NodeRole::Manager, &cluster_id, expiry)
                .map_err(|e| {
                    ControlError::internal("cannot issue this manager's certificate", e)
                })?;
            (ca, issued)
        }
        Some(ca) => {
            let entries = external::entries_for(spec, ca.cert_pem());
            let client = external::client_for(&entries, ca.cert_pem(), None)
                .map_err(external::config_error)?;
            let want = swarmguard_ca::Expected {
                node_id: &node_id,
                role: NodeRole::Manager,
                cluster_id: &cluster_id,
                csr: &checked,
                expiry,
            };
            let issued = client.sign(&ca, &csr, &want).await.map_err(|e| {
                ControlError::Unavailable(format!(
                    "cannot get this manager's certificate from the external CA: {e}"
                ))
            })?;
            tracing::info!(
                "swarm root is the external CA's certificate; this manager holds no root key"
            );
            (ca, issued)
        }
    };
    Ok(NewCluster {
        ca,
        cluster_id,
        node_id,
        node_key_pem,
        issued,
    })
}

fn cluster_record(new: &NewCluster, spec: Spec, req: &InitOptions) -> ClusterRecord {
    let now = now_rfc3339();
    ClusterRecord {
        id: new.cluster_id.clone(),
        created_at: now.clone(),
        updated_at: now,
        spec,
        root_ca_pem: String::from_utf8_lossy(new.ca.cert_pem()).into_owned(),
        join_tokens: TokenPair {
            worker: JoinToken::generate(new.ca.cert_pem()).to_string(),
            manager: JoinToken::generate(new.ca.cert_pem()).to_string(),
        },
        last_forced_rotation: 0,
        removed_nodes: Default::default(),
        default_addr_pool: req.default_addr_pool.clone().filter(|p| !p.is_empty()),
        subnet_size: if req.subnet_size == 0 {
            24
        } else {
            req.subnet_size
        },
        data_path_port: if req.data_path_port == 0 {
            4789
        } else {
            req.data_path_port
        },
        root_rotation: None,
    }
}

fn own_node_record(
    new: &NewCluster,
    availability: Availability,
    advertise: SocketAddr,
    raft_id: u64,
) -> NodeRecord {
    let now = now_rfc3339();
    NodeRecord {
        id: new.node_id.clone(),
        created_at: now.clone(),
        updated_at: now,
        spec: NodeSpec {
            name: String::new(),
            labels: Some(Default::default()),
            role: Role::Manager,
            availability,
        },
        role: Role::Manager,
        description: local::describe_this_host(&new.ca),
        status: NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
            addr: advertise.ip().to_string(),
        },
        manager_addr: Some(advertise.to_string()),
        raft_id: Some(raft_id),
        software: NodeSoftware::SwarmguardManager,
        session_manager: None,
        certificate: CertificateRecord {
            state: CertState::Issued,
            cert_pem: String::from_utf8_lossy(&new.issued.cert_pem).into_owned(),
            not_after: unix_seconds(new.issued.not_after),
            csr_b64: String::new(),
            err: String::new(),
        },
    }
}

/// At init the root is created here or learned from an external CA; a signing CA in the init
/// spec has nothing to rotate from.
fn refuse_unsupported(spec: &Spec) -> Result<(), ControlError> {
    if !spec.ca_config.signing_ca_cert.is_empty() || !spec.ca_config.signing_ca_key.is_empty() {
        return Err(ControlError::rpc(
            Code::Unimplemented,
            "a signing CA at swarm init is not supported; init, then `docker swarm ca --rotate --ca-cert … --ca-key …`",
        ));
    }
    Ok(())
}
