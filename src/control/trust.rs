//! Content trust at the manager: images of repositories under a `--require-signed` prefix are
//! resolved through the trust server with full TUF verification (`swarmguard_notary::client`)
//! and pinned as `name:tag@sha256:…` into every task; anything unsigned, tampered, expired or
//! rolled back refuses the service. Each repository's root is pinned on first use (or
//! configured with `--trust-root`) and the versions last accepted are kept in the store
//! (`trust/<repository>`), so neither survives a swap or a rollback across restarts.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use swarmguard_notary::client::{
    self as tuf_client, Files, Resolved, Server, TrustError, Versions,
};

use super::audit::AuditEvent;
use super::error::{Code, ControlError};
use super::image_ref::ImageRef;
use super::records;
use super::Control;
use crate::store::Txn;

/// How the manager checks images.
pub struct TrustPolicy {
    pub server: Server,
    /// Repository prefixes (`registry:5000/`, `registry:5000/team/`) or `*`.
    pub require: Vec<String>,
    /// Roots configured per repository (`--trust-root GUN=FILE`): never replaced by first use.
    pub roots: HashMap<String, Vec<u8>>,
}

impl TrustPolicy {
    pub fn requires(&self, r: &ImageRef) -> bool {
        let (name, repo) = (r.name(), r.repository());
        self.require
            .iter()
            .any(|p| p == "*" || name.starts_with(p.as_str()) || repo.starts_with(p.as_str()))
    }
}

/// What the manager remembers of a repository's trust data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TrustRecord {
    /// The root pinned on first use (base64 of the exact bytes).
    root_b64: String,
    versions: Versions,
}

fn trust_key(gun: &str) -> String {
    format!("trust/{gun}")
}

/// Trust state of the running manager: policy and the last metadata fetched per repository.
#[derive(Default)]
pub struct Trust {
    policy: RwLock<Option<std::sync::Arc<TrustPolicy>>>,
    cache: Mutex<HashMap<String, Files>>,
}

fn refused(image: &str, e: impl std::fmt::Display) -> ControlError {
    ControlError::rpc(
        Code::InvalidArgument,
        format!("image {image} refused by content trust: {e}"),
    )
}

impl Control {
    /// Turns content trust on (manager start-up).
    pub fn set_trust(&self, policy: TrustPolicy) {
        *self.trust.policy.write().unwrap_or_else(|e| e.into_inner()) =
            Some(std::sync::Arc::new(policy));
    }

    fn trust_policy(&self) -> Option<std::sync::Arc<TrustPolicy>> {
        self.trust
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves a repository's tag to its signed digest, verifying the whole chain. The warm
    /// path fetches only timestamp.json and reuses the rest when it did not change.
    pub async fn resolve_signed(&self, gun: &str, tag: &str) -> Result<Resolved, TrustError> {
        let Some(policy) = self.trust_policy() else {
            return Err(TrustError::Unreachable {
                gun: gun.into(),
                reason: "no trust server configured (swarmguard manager --trust-server)".into(),
            });
        };
        let cached = self
            .trust
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(gun)
            .cloned();
        let files = match cached {
            Some(c) => match tuf_client::fetch_role(&policy.server, gun, "timestamp").await? {
                Some(ts) if ts == c.timestamp => c,
                _ => tuf_client::fetch_all(&policy.server, gun).await?,
            },
            None => tuf_client::fetch_all(&policy.server, gun).await?,
        };
        let stored: TrustRecord = records::get(&self.store, &trust_key(gun))
            .ok()
            .flatten()
            .map(|s| s.record)
            .unwrap_or_default();
        let first_use = B64.decode(&stored.root_b64).ok().filter(|r| !r.is_empty());
        let pinned = policy.roots.get(gun).cloned().or(first_use);
        let now = time::OffsetDateTime::now_utc();
        let resolved =
            tuf_client::verify(gun, tag, &files, pinned.as_deref(), stored.versions, now)?;
        let root_b64 = B64.encode(&files.root);
        if root_b64 != stored.root_b64 || resolved.versions != stored.versions {
            let record = TrustRecord {
                root_b64,
                versions: resolved.versions,
            };
            if let Ok(op) = records::put(&trust_key(gun), &record) {
                if let Err(e) = records::apply(
                    &self.store,
                    Txn {
                        checks: vec![],
                        ops: vec![op],
                    },
                )
                .await
                {
                    tracing::warn!(error = %e, %gun, "cannot record the trust data versions seen");
                }
            }
        }
        self.trust
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gun.to_string(), files);
        Ok(resolved)
    }

    /// The image tasks of a new or changed spec run: the spec's own reference when content
    /// trust does not cover its repository, else `name:tag@sha256:<signed digest>`. Every
    /// decision goes to the audit log.
    pub(super) async fn decide_image(
        &self,
        service: &str,
        image: &str,
    ) -> Result<String, ControlError> {
        let audit = |allowed: bool, outcome: String| {
            self.audit.record(AuditEvent::ImageDecision {
                service: service.into(),
                image: image.into(),
                allowed,
                outcome,
            })
        };
        let r = ImageRef::parse(image).ok_or_else(|| refused(image, "not a valid reference"))?;
        let Some(policy) = self.trust_policy().filter(|p| p.requires(&r)) else {
            return Ok(image.to_string());
        };
        let Some(tag) = r
            .tag
            .clone()
            .or_else(|| r.digest.is_none().then(|| "latest".to_string()))
        else {
            let e = "name it by tag: the manager resolves the tag's signed digest itself";
            audit(false, e.into()).await;
            return Err(refused(image, e));
        };
        drop(policy);
        match self.resolve_signed(&r.repository(), &tag).await {
            Ok(res) => {
                if let Some(d) = r.digest.as_ref().filter(|d| **d != res.digest) {
                    let e = format!(
                        "digest {d} is not the signed digest of tag {tag:?} ({})",
                        res.digest
                    );
                    audit(false, e.clone()).await;
                    return Err(refused(image, e));
                }
                let pinned = format!("{}:{tag}@{}", r.name(), res.digest);
                audit(true, pinned.clone()).await;
                Ok(pinned)
            }
            Err(e) => {
                audit(false, e.to_string()).await;
                Err(refused(image, e))
            }
        }
    }

    /// `GET /distribution/{name}/json` for a repository content trust covers: the signed
    /// digest and size. `None`: not covered (the CLI then warns and sends the tag).
    pub async fn distribution(&self, image: &str) -> Option<Result<Resolved, ControlError>> {
        let r = ImageRef::parse(image)?;
        self.trust_policy().filter(|p| p.requires(&r))?;
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        Some(
            self.resolve_signed(&r.repository(), &tag)
                .await
                .map_err(|e| refused(image, e)),
        )
    }
}
