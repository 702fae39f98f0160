//! `swarmguard manager`: the manager daemon on its embedded defaults.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::control::ca::local::ManagerConfig;
use crate::control::Control;
use crate::engine::locked::{Gate, Locked};
use crate::store::{Store, StoreOptions};

#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Where the cluster store, keys and this manager's certificates live (created 0700).
    #[arg(long, default_value = "./swarmguard-data", env = "SWARMGUARD_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Engine API endpoints for the docker CLI: `unix:///path.sock` or `tcp://127.0.0.1:PORT`
    /// (loopback only: the Engine API has no TLS yet). Repeat to serve several.
    /// Default: unix://<data-dir>/swarmguard.sock
    #[arg(long = "engine-api", value_name = "ENDPOINT")]
    pub engine_api: Vec<String>,

    /// Address of the cluster gRPC port (SwarmKit's --listen-addr). Used unless
    /// `docker swarm init --listen-addr` names another one.
    #[arg(long, default_value = "0.0.0.0:2377")]
    pub listen_addr: SocketAddr,

    /// Address other nodes use to reach this manager, when `docker swarm init` gives none.
    #[arg(long)]
    pub advertise_addr: Option<String>,

    /// Raft leader heartbeat (ms); also how long one AppendEntries may take. Keep well below
    /// the election timeout.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub raft_heartbeat_ms: u64,

    /// Raft election timeout (ms), the range's minimum (its maximum is twice this): a follower
    /// campaigns after 3 to 4 times this without a heartbeat (the leader lease, the maximum,
    /// plus a timeout drawn from the range), which is about how long failover takes.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(30..=60_000))]
    pub raft_election_ms: u64,

    /// Disaster recovery after losing the quorum for good: this manager becomes the only one
    /// of its swarm, keeping the swarm's state (SwarmKit's --force-new-cluster). Other
    /// managers join again with the manager token and fresh data dirs.
    #[arg(long)]
    pub force_new_cluster: bool,

    /// Content trust: the trust server (`https://host:port`) that `service create|update`
    /// resolves signed image digests through. Needs --trust-ca and --require-signed.
    #[arg(long, value_name = "URL")]
    pub trust_server: Option<String>,

    /// PEM certificate(s) the trust server's TLS certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub trust_ca: Option<PathBuf>,

    /// A repository's root.json to trust instead of pinning the first one seen (repeatable).
    #[arg(long = "trust-root", value_name = "GUN=FILE")]
    pub trust_root: Vec<String>,

    /// For a trust server with token authentication: a file holding `user:password` of an
    /// account that may pull (mode 0600; read once at start). The manager answers the server's
    /// Bearer challenge with a token from its realm, as the docker CLI does after `docker login`.
    #[arg(long, value_name = "FILE")]
    pub trust_credentials: Option<PathBuf>,

    /// Repositories whose images must be signed: a prefix such as `registry:5000/` or
    /// `registry:5000/team/`, or `*` for every repository (repeatable).
    #[arg(long = "require-signed", value_name = "PREFIX")]
    pub require_signed: Vec<String>,
}

/// The content-trust options as a policy, or `None` when content trust is off.
fn trust_policy(args: &ManagerArgs) -> anyhow::Result<Option<crate::control::trust::TrustPolicy>> {
    let Some(url) = &args.trust_server else {
        if !args.require_signed.is_empty()
            || !args.trust_root.is_empty()
            || args.trust_credentials.is_some()
        {
            bail!("--require-signed, --trust-root and --trust-credentials need --trust-server https://HOST:PORT");
        }
        return Ok(None);
    };
    if args.require_signed.is_empty() {
        bail!("--trust-server {url}: name the repositories that must be signed with --require-signed PREFIX (or '*')");
    }
    let ca_path = args
        .trust_ca
        .as_ref()
        .context("--trust-server needs --trust-ca FILE: the CA its TLS certificate chains to")?;
    let ca = fs::read(ca_path)
        .with_context(|| format!("cannot read --trust-ca {}", ca_path.display()))?;
    let mut server =
        swarmguard_notary::client::Server::new(url, &ca).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(path) = &args.trust_credentials {
        let text = swarmguard_secrets::keyfile::read_private_text(path)
            .with_context(|| format!("--trust-credentials {}", path.display()))?;
        let creds = swarmguard_notary::client::token::Credentials::parse(&text)
            .map_err(|e| anyhow::anyhow!("--trust-credentials {}: {e}", path.display()))?;
        server = server.with_credentials(creds);
    }
    let mut roots = std::collections::HashMap::new();
    for r in &args.trust_root {
        let (gun, file) = r
            .split_once('=')
            .with_context(|| format!("--trust-root {r:?}: expected GUN=FILE"))?;
        let raw = fs::read(file).with_context(|| format!("cannot read --trust-root {file}"))?;
        roots.insert(gun.to_string(), raw);
    }
    Ok(Some(crate::control::trust::TrustPolicy {
        server,
        require: args.require_signed.clone(),
        roots,
    }))
}

enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

fn parse_endpoint(s: &str) -> anyhow::Result<Endpoint> {
    if let Some(path) = s.strip_prefix("unix://") {
        if path.is_empty() {
            bail!("--engine-api {s:?}: the unix socket path is empty; use unix:///run/swarmguard.sock");
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(addr) = s.strip_prefix("tcp://") {
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("--engine-api {s:?}: expected tcp://127.0.0.1:PORT"))?;
        if !addr.ip().is_loopback() {
            bail!("--engine-api {s:?}: the Engine API carries no TLS yet, so swarmguard serves it on loopback only; use tcp://127.0.0.1:{}", addr.port());
        }
        return Ok(Endpoint::Tcp(addr));
    }
    bail!("--engine-api {s:?}: expected unix:///path.sock or tcp://127.0.0.1:PORT")
}

pub async fn run(args: ManagerArgs) -> anyhow::Result<()> {
    let data_dir = prepare_data_dir(&args.data_dir)?;
    let endpoints = if args.engine_api.is_empty() {
        vec![Endpoint::Unix(data_dir.join("swarmguard.sock"))]
    } else {
        args.engine_api
            .iter()
            .map(|s| parse_endpoint(s))
            .collect::<anyhow::Result<_>>()?
    };

    let opts = store_options(&args, &data_dir)?;
    let config = ManagerConfig {
        data_dir: data_dir.clone(),
        listen_addr: args.listen_addr,
        advertise_addr: args.advertise_addr.clone(),
    };
    let trust = trust_policy(&args)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (unlock_tx, mut unlock_rx) = tokio::sync::mpsc::channel(1);
    let wrapped = wrapped_key(&data_dir)?;
    let locked = wrapped.map(|w| Locked::new(data_dir.clone(), w, unlock_tx));
    let gates: Vec<_> = endpoints
        .iter()
        .map(|ep| Gate::new(locked.clone(), ep.transport()))
        .collect();
    let (store, control, mut servers) = if locked.is_some() {
        // Locked: serve `docker swarm unlock` (and 503s) until the right key arrives.
        let servers = serve_engine_api(endpoints, &gates, &stop_rx).await?;
        tracing::warn!(
            "this manager is locked (autolock): run `docker swarm unlock` with the unlock key"
        );
        let (dek, key, reply) = tokio::select! {
            u = unlock_rx.recv() => u.context("the unlock channel closed")?,
            _ = term.recv() => return stop_locked(stop_tx, servers).await,
            _ = int.recv() => return stop_locked(stop_tx, servers).await,
        };
        match open_control(&data_dir, opts, config, Some(dek)).await {
            Ok((store, control)) => {
                control.set_unlock_key(Some(key));
                // The full API first, so the CLI's next request after the answer meets it.
                for gate in &gates {
                    gate.open(control.clone());
                }
                let _ = reply.send(Ok(()));
                tracing::info!("unlocked");
                (store, control, servers)
            }
            Err(e) => {
                let _ = reply.send(Err(format!("{e:#}")));
                return Err(e);
            }
        }
    } else {
        // Open before serving, so the first request already meets the full API.
        let (store, control) = open_control(&data_dir, opts, config, None).await?;
        for gate in &gates {
            gate.open(control.clone());
        }
        let servers = serve_engine_api(endpoints, &gates, &stop_rx).await?;
        (store, control, servers)
    };
    if args.force_new_cluster {
        control
            .forget_other_managers()
            .await
            .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    }
    // The key file catches up with the swarm's unlock key in `follow_autolock`, once this
    // manager's state is current.
    if let Some(policy) = trust {
        tracing::info!(require = ?policy.require, "content trust on: images are pinned to signed digests");
        control.set_trust(policy);
    }
    match control.local_node_id() {
        Some(id) => tracing::info!(node_id = %id, "manager of an existing swarm"),
        None => tracing::info!("not part of a swarm yet: run `docker swarm init`"),
    }
    tracing::info!("Engine API ready");
    servers.extend(spawn_background(&control, &stop_rx));

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = stop_tx.send(true);
    for s in servers {
        s.await??;
    }
    store
        .shutdown()
        .await
        .context("cluster store did not shut down cleanly")?;
    tracing::info!("stopped");
    Ok(())
}

type Task = tokio::task::JoinHandle<std::io::Result<()>>;

impl Endpoint {
    fn transport(&self) -> crate::engine::Transport {
        match self {
            Endpoint::Unix(_) => crate::engine::Transport::Unix,
            Endpoint::Tcp(_) => crate::engine::Transport::Tcp,
        }
    }
}

/// The wrapped data key, when autolock left `keys/dek` wrapped (the manager starts locked).
fn wrapped_key(data_dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    use swarmguard_secrets::keyfile::{read_dek_file, DekFile};
    let path = Store::key_path(data_dir);
    if fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    match read_dek_file(&path).with_context(|| format!("cannot read {}", path.display()))? {
        DekFile::Wrapped(w) => Ok(Some(w)),
        DekFile::Plain(_) => Ok(None),
    }
}

/// The store's options from the command line. A fresh manager gets its raft group at
/// `swarm init`, or joins one at `swarm join`.
fn store_options(args: &ManagerArgs, data_dir: &Path) -> anyhow::Result<StoreOptions> {
    // A follower campaigns after at least 3 times the election timeout without a heartbeat
    // (openraft's leader lease, twice it, plus at least it): keep that at 6 heartbeats or more.
    if args.raft_election_ms < 2 * args.raft_heartbeat_ms {
        bail!(
            "--raft-election-ms {} must be at least 2 times --raft-heartbeat-ms {}, or followers campaign against a live leader",
            args.raft_election_ms,
            args.raft_heartbeat_ms
        );
    }
    let recorded = crate::control::ca::local::LocalIdentity::read_recorded(data_dir);
    if args.force_new_cluster && recorded.is_err() {
        bail!(
            "--force-new-cluster: {} is not the data dir of a swarm manager",
            data_dir.display()
        );
    }
    Ok(StoreOptions {
        bootstrap: false,
        force_new_cluster: args.force_new_cluster,
        advertise_addr: recorded
            .map(|l| l.advertise_addr.to_string())
            .unwrap_or_else(|_| StoreOptions::default().advertise_addr),
        heartbeat_ms: args.raft_heartbeat_ms,
        election_ms: (args.raft_election_ms, 2 * args.raft_election_ms),
        ..Default::default()
    })
}

/// Opens the store (with the unwrapped data key of a locked manager) and the control layer.
async fn open_control(
    data_dir: &Path,
    opts: StoreOptions,
    config: ManagerConfig,
    dek: Option<swarmguard_secrets::DataKey>,
) -> anyhow::Result<(Store, Arc<Control>)> {
    let store = match dek {
        Some(dek) => Store::open_unlocked(data_dir, opts, dek).await,
        None => Store::open_with(data_dir, opts).await,
    }
    .with_context(|| format!("cannot open the cluster store in {}", data_dir.display()))?;
    let control =
        Arc::new(Control::open(store.clone(), config).map_err(|e| anyhow::anyhow!(e.to_string()))?);
    Ok((store, control))
}

/// A signal while locked: nothing is open but the Engine API.
async fn stop_locked(stop_tx: watch::Sender<bool>, servers: Vec<Task>) -> anyhow::Result<()> {
    tracing::info!("shutting down while locked");
    let _ = stop_tx.send(true);
    for s in servers {
        s.await??;
    }
    Ok(())
}

/// One HTTP server per Engine API endpoint, each stopping when `stop` turns true.
async fn serve_engine_api(
    endpoints: Vec<Endpoint>,
    gates: &[Arc<Gate>],
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<Task>> {
    let mut servers = Vec::new();
    for (ep, gate) in endpoints.into_iter().zip(gates) {
        let app = gate.service();
        let mut stop = stop_rx.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match ep {
            Endpoint::Unix(path) => {
                let listener = bind_unix(&path)?;
                println!("export DOCKER_HOST=unix://{}", path.display());
                servers.push(tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                }));
            }
            Endpoint::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                let local = listener.local_addr()?;
                println!("export DOCKER_HOST=tcp://{local}");
                servers.push(tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                }));
            }
        }
    }
    Ok(servers)
}

/// The manager's background work: the cluster gRPC port (while part of a swarm), this
/// manager's own certificate renewal, signing what a signer could not sign at once, and the
/// orchestrator and scheduler that turn services into placed tasks.
fn spawn_background(control: &Arc<Control>, stop: &watch::Receiver<bool>) -> Vec<Task> {
    let (c, s) = (control.clone(), stop.clone());
    let port = tokio::spawn(async move {
        crate::grpc::supervise(c, s).await;
        Ok(())
    });
    let (c, s) = (control.clone(), stop.clone());
    let renewal = tokio::spawn(async move {
        crate::control::ca::renewal::keep_own_certificate_fresh(c, s).await;
        Ok(())
    });
    let (c, s) = (control.clone(), stop.clone());
    let signing = tokio::spawn(async move {
        crate::control::ca::signer::reconcile(c, s).await;
        Ok(())
    });
    let (c, s) = (control.clone(), stop.clone());
    let rotation = tokio::spawn(async move {
        crate::control::ca::rotation::reconcile(c, s).await;
        Ok(())
    });
    let (c, s) = (control.clone(), stop.clone());
    let orchestration = tokio::spawn(async move {
        crate::control::orchestrator::run(c, s).await;
        Ok(())
    });
    let (c, s) = (control.clone(), stop.clone());
    let autolock = tokio::spawn(async move {
        c.follow_autolock(s).await;
        Ok(())
    });
    vec![port, renewal, signing, rotation, orchestration, autolock]
}

/// Creates the data dir 0700 and refuses one others can read: it holds the store's key.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let meta = fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| {
            format!(
                "data dir {} is readable by others and cannot be made 0700",
                dir.display()
            )
        })?;
    }
    Ok(fs::canonicalize(dir)?)
}

fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            // A socket left by a crash; if another manager still serves it, the bind below is
            // the wrong fix, so check first.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use by another process: is a manager already running on this data dir?", path.display());
            }
            fs::remove_file(path)?;
        } else {
            bail!(
                "{} exists and is not a socket: remove it or choose another --engine-api path",
                path.display()
            );
        }
    }
    // Bound inside a fresh 0700 directory beside it, made 0600 there, then renamed into place:
    // the socket is never reachable at its final path with the umask's wider mode.
    let parent = path.parent().unwrap_or(Path::new("."));
    let staging = parent.join(format!(".sg-sock-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let tmp = staging.join("s");
    let bound = UnixListener::bind(&tmp)
        .with_context(|| format!("cannot listen on {}", path.display()))
        .and_then(|l| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
            fs::rename(&tmp, path)
                .with_context(|| format!("cannot move the socket to {}", path.display()))?;
            Ok(l)
        });
    let _ = fs::remove_dir_all(&staging);
    let listener = bound?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_api_endpoints_are_unix_or_loopback_tcp() {
        assert!(
            matches!(parse_endpoint("unix:///run/sg.sock"), Ok(Endpoint::Unix(p)) if p == Path::new("/run/sg.sock"))
        );
        assert!(matches!(
            parse_endpoint("tcp://127.0.0.1:2375"),
            Ok(Endpoint::Tcp(_))
        ));
        assert!(matches!(
            parse_endpoint("tcp://[::1]:2375"),
            Ok(Endpoint::Tcp(_))
        ));
        let refused = [
            ("tcp://0.0.0.0:2375", "loopback only"),
            ("tcp://192.0.2.1:2375", "loopback only"),
            ("tcp://localhost:2375", "expected tcp://127.0.0.1:PORT"),
            ("unix://", "path is empty"),
            ("http://127.0.0.1:2375", "expected unix:///path.sock"),
        ];
        for (input, want) in refused {
            let err = parse_endpoint(input)
                .err()
                .unwrap_or_else(|| panic!("{input} accepted"));
            assert!(format!("{err:#}").contains(want), "{input}: {err:#}");
        }
    }

    #[test]
    fn data_dir_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_data_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_live_socket_is_not_stolen_and_a_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        fs::write(&file, b"x").unwrap();
        let err = tokio_test_bind(&file).unwrap_err();
        assert!(format!("{err:#}").contains("is not a socket"), "{err:#}");
        assert_eq!(fs::read(&file).unwrap(), b"x");

        let sock = dir.path().join("live.sock");
        let _live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = tokio_test_bind(&sock).unwrap_err();
        assert!(
            format!("{err:#}").contains("in use by another process"),
            "{err:#}"
        );
    }

    /// The socket appears at its path already 0600, and the staging directory is gone.
    #[test]
    fn the_socket_is_private_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("api.sock");
        tokio_test_bind(&sock).unwrap();
        let meta = fs::symlink_metadata(&sock).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the socket remains: {left:?}");
    }

    fn tokio_test_bind(path: &Path) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async { bind_unix(path).map(|_| ()) })
    }
}
