//! Validation of an upload against the repository's current state, the way
//! Notary's server does it, followed by building and signing the
//! server-managed snapshot (when the server holds that key) and timestamp.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

use crate::names;
pub use crate::repo::{RepoState, Write};
use crate::signer::{HeldKey, Signer, SignerError};
use crate::tuf::{self, Envelope, FileMeta, Parsed, Root, Snapshot, Targets, Timestamp, TufError};

/// Bounds on what one upload may contain.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest single metadata file.
    pub max_metadata_bytes: usize,
    /// Most targets in one targets/delegation file.
    pub max_targets: usize,
    /// Most delegation roles declared in one targets file.
    pub max_delegations: usize,
    /// Most keys in one key map.
    pub max_keys: usize,
    /// Most signatures on one file.
    pub max_signatures: usize,
    /// Most roles stored per repository.
    pub max_roles: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_metadata_bytes: 4 << 20,
            max_targets: 20_000,
            max_delegations: 256,
            max_keys: 256,
            max_signatures: 32,
            max_roles: 512,
        }
    }
}

/// Why an upload was refused. Every variant is a client error (400) except
/// [`UpdateError::Signer`] and [`UpdateError::Storage`], which are server faults.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{role}: {source}")]
    Tuf { role: String, source: TufError },
    #[error("{0}")]
    Invalid(String),
    #[error("{role}: version {got} is not newer than the current version {current}")]
    OldVersion {
        role: String,
        got: u64,
        current: u64,
    },
    #[error("{0} exceeds the size limit")]
    TooLarge(String),
    #[error("signer: {0}")]
    Signer(#[from] SignerError),
    /// The store failed: a server fault (500), never the client's.
    #[error(transparent)]
    Storage(#[from] crate::store::StoreError),
}

fn inv(msg: impl Into<String>) -> UpdateError {
    UpdateError::Invalid(msg.into())
}

fn tuf_err(role: &str) -> impl Fn(TufError) -> UpdateError + '_ {
    move |source| UpdateError::Tuf {
        role: role.to_string(),
        source,
    }
}

/// Lifetimes of server-generated metadata (Notary's defaults).
pub const SNAPSHOT_LIFETIME: Duration = Duration::days(3 * 365);
pub const TIMESTAMP_LIFETIME: Duration = Duration::days(14);

fn check_sig_count(role: &str, env: &Envelope, limits: &Limits) -> Result<(), UpdateError> {
    if env.signatures.len() > limits.max_signatures {
        return Err(UpdateError::TooLarge(format!("{role}: signature list")));
    }
    Ok(())
}

fn parse_root(raw: &[u8], limits: &Limits) -> Result<Parsed<Root>, UpdateError> {
    let p: Parsed<Root> = tuf::parse(raw, "Root").map_err(tuf_err("root"))?;
    check_sig_count("root", &p.envelope, limits)?;
    if p.body.keys.len() > limits.max_keys {
        return Err(UpdateError::TooLarge("root: key list".into()));
    }
    tuf::check_key_map(&p.body.keys).map_err(tuf_err("root"))?;
    for role in ["root", "targets", "snapshot", "timestamp"] {
        let r = p
            .body
            .roles
            .get(role)
            .ok_or_else(|| inv(format!("root: role {role} missing")))?;
        if r.threshold == 0 || r.keyids.is_empty() || r.threshold as usize > r.keyids.len() {
            return Err(inv(format!(
                "root: role {role} has an impossible threshold"
            )));
        }
        if let Some(k) = r.keyids.iter().find(|k| !p.body.keys.contains_key(*k)) {
            return Err(inv(format!("root: role {role} lists unknown key {k}")));
        }
    }
    if p.body.roles.len() != 4 {
        return Err(inv("root: unexpected role in roles"));
    }
    Ok(p)
}

fn parse_targets(role: &str, raw: &[u8], limits: &Limits) -> Result<Parsed<Targets>, UpdateError> {
    let p: Parsed<Targets> = tuf::parse(raw, "Targets").map_err(tuf_err(role))?;
    check_sig_count(role, &p.envelope, limits)?;
    if p.body.targets.len() > limits.max_targets {
        return Err(UpdateError::TooLarge(format!("{role}: target list")));
    }
    let d = &p.body.delegations;
    if d.roles.len() > limits.max_delegations || d.keys.len() > limits.max_keys {
        return Err(UpdateError::TooLarge(format!("{role}: delegations")));
    }
    tuf::check_key_map(&d.keys).map_err(tuf_err(role))?;
    let mut seen = Vec::new();
    for dr in &d.roles {
        if !names::is_delegation(&dr.name) || names::parent_role(&dr.name) != Some(role) {
            return Err(inv(format!(
                "{role}: delegation {:?} is not a direct child",
                dr.name
            )));
        }
        if seen.contains(&&dr.name) {
            return Err(inv(format!("{role}: delegation {} listed twice", dr.name)));
        }
        seen.push(&dr.name);
        if dr.threshold == 0 || dr.threshold as usize > dr.keyids.len() {
            return Err(inv(format!(
                "{role}: delegation {} has an impossible threshold",
                dr.name
            )));
        }
        if let Some(k) = dr.keyids.iter().find(|k| !d.keys.contains_key(*k)) {
            return Err(inv(format!(
                "{role}: delegation {} lists unknown key {k}",
                dr.name
            )));
        }
    }
    for (name, meta) in &p.body.targets {
        if !meta.hashes.contains_key("sha256") && !meta.hashes.contains_key("sha512") {
            return Err(inv(format!("{role}: target {name:?} has no hash")));
        }
    }
    Ok(p)
}

fn hash_prefix_ok(name: &str, paths: &[String]) -> bool {
    paths.iter().any(|p| name.starts_with(p.as_str()))
}

/// Validate `uploads` (role → raw bytes) against `state` and produce every
/// file to store, including the new snapshot (if server-managed) and
/// timestamp.
pub fn validate_update(
    gun: &str,
    state: &RepoState,
    uploads: &BTreeMap<String, Vec<u8>>,
    signer: &dyn Signer,
    now: OffsetDateTime,
    limits: &Limits,
) -> Result<Vec<Write>, UpdateError> {
    check_upload_names(uploads, limits)?;
    let mut u = Update {
        gun,
        state,
        uploads,
        limits,
        now,
        writes: Vec::new(),
        after: state
            .roles
            .iter()
            .map(|(r, (_, raw))| (r.clone(), raw.clone()))
            .collect(),
    };
    if u.after.len() + uploads.len() > limits.max_roles {
        return Err(UpdateError::TooLarge("number of roles".into()));
    }
    let root = u.root()?;
    u.current_targets_still_accepted(&root)?;
    u.targets_and_delegations(&root)?;
    if !u.after.contains_key("targets") {
        return Err(inv("repository has no targets: upload targets.json"));
    }
    // An upload that changes no role (an unchanged root re-posted) stores nothing: re-signing
    // snapshot and timestamp for it would let anyone grow the history without a key.
    let client_snapshot = uploads.contains_key("snapshot");
    if u.writes.is_empty() && !client_snapshot {
        return Ok(Vec::new());
    }
    let snapshot_raw = match uploads.get("snapshot") {
        Some(raw) => u.client_snapshot(&root, raw)?,
        None => u.server_snapshot(&root, signer)?,
    };
    u.after.insert("snapshot".into(), snapshot_raw.clone());
    let ts = make_timestamp(gun, &root, state, &snapshot_raw, signer, now)?;
    u.writes.push(ts);
    Ok(u.writes)
}

/// Names and sizes of the uploaded files, before any of them is parsed.
fn check_upload_names(
    uploads: &BTreeMap<String, Vec<u8>>,
    limits: &Limits,
) -> Result<(), UpdateError> {
    if uploads.is_empty() {
        return Err(inv("no metadata in upload"));
    }
    for (role, raw) in uploads {
        if !names::valid_role(role) {
            return Err(inv(format!("invalid role name {role:?}")));
        }
        if role == "timestamp" {
            return Err(inv(
                "timestamp is managed by the server and cannot be uploaded",
            ));
        }
        if raw.len() > limits.max_metadata_bytes {
            return Err(UpdateError::TooLarge(format!("{role} metadata")));
        }
    }
    Ok(())
}

/// One upload being validated, role by role (as Notary's `validateUpdate` delegates per
/// role): what is stored, what was uploaded, and what will be stored afterwards.
struct Update<'a> {
    gun: &'a str,
    state: &'a RepoState,
    uploads: &'a BTreeMap<String, Vec<u8>>,
    limits: &'a Limits,
    now: OffsetDateTime,
    /// Files to store, in order.
    writes: Vec<Write>,
    /// The repository as it will be after this update: role → raw bytes.
    after: BTreeMap<String, Vec<u8>>,
}

impl Update<'_> {
    /// The root this update is checked against: the uploaded one (validated against the
    /// stored one) or the stored one.
    fn root(&mut self) -> Result<Parsed<Root>, UpdateError> {
        let old_root = match self.state.roles.get("root") {
            Some((_, raw)) => Some(parse_root(raw, self.limits)?),
            None => None,
        };
        let Some(raw) = self.uploads.get("root") else {
            return old_root.ok_or_else(|| inv("repository has no root: upload root.json first"));
        };
        let new = parse_root(raw, self.limits)?;
        let unchanged = self
            .state
            .roles
            .get("root")
            .is_some_and(|(_, old)| old == raw);
        if !unchanged {
            validate_new_root(self.gun, old_root.as_ref(), &new, self.now)?;
            self.writes.push(Write {
                role: "root".into(),
                version: new.body.version,
                raw: raw.clone(),
            });
            self.after.insert("root".into(), raw.clone());
        }
        Ok(new)
    }

    /// A new root that changes the targets keys must come with a targets file they signed:
    /// the stored one has to verify under the new root.
    fn current_targets_still_accepted(&self, root: &Parsed<Root>) -> Result<(), UpdateError> {
        if !self.uploads.contains_key("root") || self.uploads.contains_key("targets") {
            return Ok(());
        }
        if let Some((_, raw)) = self.state.roles.get("targets") {
            let t = parse_targets("targets", raw, self.limits)?;
            let r = &root.body.roles["targets"];
            tuf::verify_threshold("targets", &t.envelope, &r.keyids, r.threshold, &root.body.keys).map_err(|e| {
                inv(format!("new root does not accept the current targets (upload a re-signed targets.json): {e}"))
            })?;
        }
        Ok(())
    }

    /// Targets and delegations, parents before children.
    fn targets_and_delegations(&mut self, root: &Parsed<Root>) -> Result<(), UpdateError> {
        let mut parsed: BTreeMap<String, Parsed<Targets>> = BTreeMap::new();
        let mut upload_roles: Vec<&String> = self
            .uploads
            .keys()
            .filter(|r| *r == "targets" || names::is_delegation(r))
            .collect();
        upload_roles.sort_by_key(|r| r.matches('/').count());
        if let Some((_, raw)) = self.state.roles.get("targets") {
            if !self.uploads.contains_key("targets") {
                parsed.insert(
                    "targets".into(),
                    parse_targets("targets", raw, self.limits)?,
                );
            }
        }
        for role in upload_roles {
            let raw = &self.uploads[role];
            let p = self.targets_file(role, raw)?;
            if role == "targets" {
                let r = &root.body.roles["targets"];
                tuf::verify_threshold(role, &p.envelope, &r.keyids, r.threshold, &root.body.keys)
                    .map_err(tuf_err(role))?;
            } else {
                check_delegation(role, &p, &mut parsed, self.state, self.limits)?;
            }
            self.writes.push(Write {
                role: role.clone(),
                version: p.body.version,
                raw: raw.clone(),
            });
            self.after.insert(role.clone(), raw.clone());
            parsed.insert(role.clone(), p);
        }
        Ok(())
    }

    /// Parse one uploaded targets or delegation file; check version and expiry.
    fn targets_file(&self, role: &str, raw: &[u8]) -> Result<Parsed<Targets>, UpdateError> {
        let p = parse_targets(role, raw, self.limits)?;
        if let Some((cur, _)) = self.state.roles.get(role) {
            if p.body.version <= *cur {
                return Err(UpdateError::OldVersion {
                    role: role.to_string(),
                    got: p.body.version,
                    current: *cur,
                });
            }
        }
        if p.body.version == 0 {
            return Err(inv(format!("{role}: version must be at least 1")));
        }
        tuf::check_expiry(role, &p.body.expires, self.now).map_err(tuf_err(role))?;
        Ok(p)
    }

    fn current_snapshot_version(&self) -> u64 {
        self.state
            .roles
            .get("snapshot")
            .map(|(v, _)| *v)
            .unwrap_or(0)
    }

    /// A snapshot signed by the client: newer, unexpired, at threshold, naming exactly the
    /// repository's files.
    fn client_snapshot(&mut self, root: &Parsed<Root>, raw: &[u8]) -> Result<Vec<u8>, UpdateError> {
        let snap_role = &root.body.roles["snapshot"];
        let current = self.current_snapshot_version();
        let p: Parsed<Snapshot> = tuf::parse(raw, "Snapshot").map_err(tuf_err("snapshot"))?;
        check_sig_count("snapshot", &p.envelope, self.limits)?;
        if p.body.version <= current {
            return Err(UpdateError::OldVersion {
                role: "snapshot".into(),
                got: p.body.version,
                current,
            });
        }
        tuf::check_expiry("snapshot", &p.body.expires, self.now).map_err(tuf_err("snapshot"))?;
        tuf::verify_threshold(
            "snapshot",
            &p.envelope,
            &snap_role.keyids,
            snap_role.threshold,
            &root.body.keys,
        )
        .map_err(tuf_err("snapshot"))?;
        check_snapshot_meta(&p.body.meta, &self.after)?;
        self.writes.push(Write {
            role: "snapshot".into(),
            version: p.body.version,
            raw: raw.to_vec(),
        });
        Ok(raw.to_vec())
    }

    /// A snapshot built and signed by the server, which must hold a key the root lists.
    fn server_snapshot(
        &mut self,
        root: &Parsed<Root>,
        signer: &dyn Signer,
    ) -> Result<Vec<u8>, UpdateError> {
        let snap_role = &root.body.roles["snapshot"];
        let key = held_key(signer, self.gun, "snapshot", &snap_role.keyids)?
            .ok_or_else(|| {
                inv("no snapshot in upload and the server does not hold the repository's snapshot key")
            })?
            .id;
        let mut meta = serde_json::Map::new();
        for (role, raw) in &self.after {
            if role != "snapshot" && role != "timestamp" {
                meta.insert(
                    role.clone(),
                    serde_json::to_value(tuf::file_meta(raw)).map_err(|e| inv(e.to_string()))?,
                );
            }
        }
        let version = self.current_snapshot_version() + 1;
        let signed = json!({
            "_type": "Snapshot",
            "expires": tuf::format_time(self.now + SNAPSHOT_LIFETIME),
            "meta": Value::Object(meta),
            "version": version,
        });
        let raw = sign_document(signer, self.gun, "snapshot", &key, signed)?;
        self.writes.push(Write {
            role: "snapshot".into(),
            version,
            raw: raw.clone(),
        });
        Ok(raw)
    }
}

/// A delegation: declared by its parent, signed at threshold by the keys the parent lists,
/// its targets and child delegations inside the paths delegated along the whole chain.
fn check_delegation(
    role: &str,
    p: &Parsed<Targets>,
    parsed: &mut BTreeMap<String, Parsed<Targets>>,
    state: &RepoState,
    limits: &Limits,
) -> Result<(), UpdateError> {
    let chain = delegation_chain(role, parsed, state, limits)?;
    let (keys, entry) = chain
        .last()
        .cloned()
        .ok_or_else(|| inv(format!("{role}: no parent")))?;
    tuf::verify_threshold(role, &p.envelope, &entry.keyids, entry.threshold, &keys)
        .map_err(tuf_err(role))?;
    for name in p.body.targets.keys() {
        if !chain.iter().all(|(_, e)| hash_prefix_ok(name, &e.paths)) {
            return Err(inv(format!(
                "{role}: target {name:?} is outside the delegated paths"
            )));
        }
    }
    // Child delegations must stay inside this role's paths.
    for child in &p.body.delegations.roles {
        for path in &child.paths {
            if !hash_prefix_ok(path, &entry.paths) {
                return Err(inv(format!(
                    "{role}: delegation {} widens the delegated paths",
                    child.name
                )));
            }
        }
    }
    Ok(())
}

/// Build a new timestamp over `snapshot_raw`, version = current + 1.
fn make_timestamp(
    gun: &str,
    root: &Parsed<Root>,
    state: &RepoState,
    snapshot_raw: &[u8],
    signer: &dyn Signer,
    now: OffsetDateTime,
) -> Result<Write, UpdateError> {
    let ts_role = &root.body.roles["timestamp"];
    let key = held_key(signer, gun, "timestamp", &ts_role.keyids)?
        .ok_or_else(|| inv("root does not list a timestamp key held by this server"))?
        .id;
    let version = state.roles.get("timestamp").map(|(v, _)| *v).unwrap_or(0) + 1;
    let signed = json!({
        "_type": "Timestamp",
        "expires": tuf::format_time(now + TIMESTAMP_LIFETIME),
        "meta": {"snapshot": tuf::file_meta(snapshot_raw)},
        "version": version,
    });
    let raw = sign_document(signer, gun, "timestamp", &key, signed)?;
    Ok(Write {
        role: "timestamp".into(),
        version,
        raw,
    })
}

/// Does this timestamp expire within half its lifetime (or is it unreadable)?
pub fn timestamp_needs_refresh(raw: &[u8], now: OffsetDateTime) -> bool {
    timestamp_refresh_at(raw).is_none_or(|t| now >= t)
}

/// From when on this timestamp expires within half its lifetime and is to be re-signed;
/// `None` if it cannot be read (re-sign now).
pub fn timestamp_refresh_at(raw: &[u8]) -> Option<OffsetDateTime> {
    let ts = tuf::parse::<Timestamp>(raw, "Timestamp").ok()?;
    let expires = tuf::parse_time(&ts.body.expires).ok()?;
    Some(expires - TIMESTAMP_LIFETIME / 2)
}

/// If the current timestamp expires within half its lifetime (or the root
/// cannot be read), re-sign it. Returns the new file to store, if any.
pub fn refresh_timestamp(
    gun: &str,
    state: &RepoState,
    signer: &dyn Signer,
    now: OffsetDateTime,
) -> Result<Option<Write>, UpdateError> {
    let (Some((_, ts_raw)), Some((_, snap_raw)), Some((_, root_raw))) = (
        state.roles.get("timestamp"),
        state.roles.get("snapshot"),
        state.roles.get("root"),
    ) else {
        return Ok(None);
    };
    let ts: Parsed<Timestamp> = tuf::parse(ts_raw, "Timestamp").map_err(tuf_err("timestamp"))?;
    let expires = tuf::parse_time(&ts.body.expires).map_err(tuf_err("timestamp"))?;
    if expires - now > TIMESTAMP_LIFETIME / 2 {
        return Ok(None);
    }
    let root = parse_root(root_raw, &Limits::default())?;
    Ok(Some(make_timestamp(
        gun, &root, state, snap_raw, signer, now,
    )?))
}

fn held_key(
    signer: &dyn Signer,
    gun: &str,
    role: &str,
    keyids: &[String],
) -> Result<Option<HeldKey>, UpdateError> {
    Ok(signer.held_key(gun, role, keyids)?)
}

fn sign_document(
    signer: &dyn Signer,
    gun: &str,
    role: &str,
    key_id: &str,
    signed: Value,
) -> Result<Vec<u8>, UpdateError> {
    let msg = crate::cjson::to_canonical(&signed).map_err(|e| inv(e.to_string()))?;
    let (method, sig) = signer.sign(gun, role, key_id, &msg)?;
    let doc = json!({
        "signed": signed,
        "signatures": [{"keyid": key_id, "method": method, "sig": B64.encode(sig)}],
    });
    // Canonical form is valid JSON and re-canonicalises to itself.
    crate::cjson::to_canonical(&doc).map_err(|e| inv(e.to_string()))
}

/// Defence in depth against a faulty or compromised signer: every snapshot
/// and timestamp about to be stored must verify against the (new) root.
pub fn verify_outgoing(state: &RepoState, writes: &[Write]) -> Result<(), UpdateError> {
    let root_raw = writes
        .iter()
        .find(|w| w.role == "root")
        .map(|w| &w.raw)
        .or_else(|| state.roles.get("root").map(|(_, r)| r))
        .ok_or_else(|| inv("no root"))?;
    let root = parse_root(root_raw, &Limits::default())?;
    for w in writes
        .iter()
        .filter(|w| w.role == "snapshot" || w.role == "timestamp")
    {
        let env: Envelope = serde_json::from_slice(&w.raw).map_err(|e| inv(e.to_string()))?;
        let r = &root.body.roles[w.role.as_str()];
        tuf::verify_threshold(&w.role, &env, &r.keyids, r.threshold, &root.body.keys).map_err(
            |e| {
                UpdateError::Signer(SignerError::Storage(format!(
                    "signer output does not verify: {e}"
                )))
            },
        )?;
    }
    Ok(())
}

fn check_snapshot_meta(
    meta: &BTreeMap<String, FileMeta>,
    after: &BTreeMap<String, Vec<u8>>,
) -> Result<(), UpdateError> {
    for (role, raw) in after {
        if role == "snapshot" || role == "timestamp" {
            continue;
        }
        let m = meta
            .get(role)
            .ok_or_else(|| inv(format!("snapshot: no entry for {role}")))?;
        if !tuf::meta_matches(m, raw) {
            return Err(inv(format!(
                "snapshot: hash or length of {role} does not match"
            )));
        }
    }
    if let Some(extra) = meta.keys().find(|r| !after.contains_key(*r)) {
        return Err(inv(format!("snapshot: entry for unknown role {extra}")));
    }
    Ok(())
}

type ChainLink = (BTreeMap<String, tuf::PublicKey>, tuf::DelegationRole);

/// For `targets/a/b`: [(keys of targets, entry a), (keys of targets/a, entry b)].
fn delegation_chain(
    role: &str,
    parsed: &mut BTreeMap<String, Parsed<Targets>>,
    state: &RepoState,
    limits: &Limits,
) -> Result<Vec<ChainLink>, UpdateError> {
    let mut names = vec![role.to_string()];
    let mut cur = role;
    while let Some(p) = names::parent_role(cur) {
        names.push(p.to_string());
        cur = names.last().map(String::as_str).unwrap_or("targets");
    }
    names.reverse(); // targets, targets/a, targets/a/b
    let mut chain = Vec::new();
    for pair in names.windows(2) {
        let (parent, child) = (&pair[0], &pair[1]);
        if !parsed.contains_key(parent) {
            let (_, raw) = state
                .roles
                .get(parent.as_str())
                .ok_or_else(|| inv(format!("{child}: parent role {parent} does not exist")))?;
            parsed.insert(parent.clone(), parse_targets(parent, raw, limits)?);
        }
        let pt = &parsed[parent];
        let entry = pt
            .body
            .delegations
            .roles
            .iter()
            .find(|r| &r.name == child)
            .cloned()
            .ok_or_else(|| inv(format!("{child}: not delegated by {parent}")))?;
        chain.push((pt.body.delegations.keys.clone(), entry));
    }
    Ok(chain)
}

/// Trust-pinning style checks of a new root: version same-or-next, root keys
/// are x509 certificates with CN == GUN valid now, signed by the new root's
/// threshold and, if there was a root, by the old root's threshold.
fn validate_new_root(
    gun: &str,
    old: Option<&Parsed<Root>>,
    new: &Parsed<Root>,
    now: OffsetDateTime,
) -> Result<(), UpdateError> {
    let v = new.body.version;
    match old {
        Some(o) if v != o.body.version + 1 => {
            return Err(if v <= o.body.version {
                UpdateError::OldVersion {
                    role: "root".into(),
                    got: v,
                    current: o.body.version,
                }
            } else {
                inv(format!(
                    "root: version {v} skips versions after {}",
                    o.body.version
                ))
            });
        }
        None if v == 0 => return Err(inv("root: version must be at least 1")),
        _ => {}
    }
    tuf::check_expiry("root", &new.body.expires, now).map_err(tuf_err("root"))?;
    let rr = &new.body.roles["root"];
    let ts = now.unix_timestamp();
    for id in &rr.keyids {
        let info = tuf::cert_info(&new.body.keys[id]).map_err(tuf_err("root"))?;
        if info.common_name.as_deref() != Some(gun) {
            return Err(inv(format!(
                "root: certificate of key {id} is not issued for {gun}"
            )));
        }
        if ts < info.not_before || ts > info.not_after {
            return Err(inv(format!(
                "root: certificate of key {id} is not currently valid"
            )));
        }
    }
    tuf::verify_threshold(
        "root",
        &new.envelope,
        &rr.keyids,
        rr.threshold,
        &new.body.keys,
    )
    .map_err(tuf_err("root"))?;
    if let Some(o) = old {
        let orr = &o.body.roles["root"];
        tuf::verify_threshold(
            "root (previous root's keys)",
            &new.envelope,
            &orr.keyids,
            orr.threshold,
            &o.body.keys,
        )
        .map_err(tuf_err("root"))?;
    }
    Ok(())
}
