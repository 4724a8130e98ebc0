//! Starting and stopping the node: bind every socket first (so a taken port fails the
//! start with a clear message), then run the data-plane workers on their threads and
//! the control plane (TCP, HTTP, signals) on tokio.

use crate::config::{Config, MediaConfig};
use crate::load::Load;
use crate::metrics::{Metrics, Transport};
use crate::net::handoff::Handoff;
use crate::net::liveness::Liveness;
use crate::net::tcp::StreamContext;
use crate::net::tls::TlsCerts;
use crate::net::{tcp, tls, udp, worker};
use crate::sfu::bwe::BweConfig;
use crate::sfu::dtls::{DtlsError, DtlsIdentity};
use crate::sfu::session::{Epoch, MediaSessions};
use crate::turn::auth::Auth;
use crate::turn::policy::{OtherNodes, PeerPolicy};
use crate::turn::server::{Limits, Settings, Shared, TurnCore};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;

/// Runs the node until SIGTERM or SIGINT, without a file to reload on SIGHUP.
pub fn run(config: Config) -> Result<(), String> {
    run_from(config, None)
}

/// Runs the node until SIGTERM or SIGINT; `path` is the file `config` came from, read
/// again on SIGHUP.
pub fn run_from(config: Config, path: Option<std::path::PathBuf>) -> Result<(), String> {
    // The TURN REST secrets are settled once, so TURN and the room API share them.
    let mut config = config;
    config.turn.auth_secret = effective_turn_secrets(&config.turn.auth_secret);
    let metrics = Arc::new(Metrics::new());
    let shutdown = Arc::new(AtomicBool::new(false));
    let liveness = Arc::new(Liveness::default());
    let udp_listen = udp_listen_addresses(&config)?;
    // Filled from the shared store's live set (`store.url`), kept across reloads.
    let other_nodes = Arc::new(OtherNodes::default());
    let turn = Arc::new(turn_shared(&config, &udp_listen, &metrics, &other_nodes));
    // How busy the workers are: new allocations and joins are refused while one of
    // them is past `node.overload_percent`.
    let load = Arc::new(Load::new(config.node.worker_count()).counting(
        metrics.overload_refused_allocations.clone(),
        metrics.overload_refused_joins.clone(),
    ));
    turn.watch_load(load.clone());
    let auth = Auth::new(
        &config.turn.realm,
        &config.turn.users,
        &config.turn.auth_secret,
        random_key(),
    );
    // TLS files are read before anything starts, so a bad one fails the start.
    let tls_certs = if config.turn.tls_listen.is_empty() {
        None
    } else {
        Some(TlsCerts::load(&config.turn.tls_cert, &config.turn.tls_key)?)
    };
    // One clock origin for every TURN core, UDP workers and TCP/TLS connections alike:
    // a port reserved by one core (EVEN-PORT) is taken, and timed, by another.
    let clock = clock_epoch();
    let epoch = clock.instant;
    // The SFU's sessions, shared by the room API (which makes them) and the workers
    // (which answer their ICE checks), on the same clock.
    // The node's DTLS certificate, made at start; its fingerprint goes into every SDP.
    // Every session's DTLS endpoint presents it.
    let dtls = dtls_identity().map_err(|e| format!("cannot make the DTLS certificate: {e}"))?;
    let media = Arc::new(
        MediaSessions::new(
            clock,
            media_candidates(&config, &udp_listen),
            Arc::new(dtls),
            metrics.sfu.clone(),
            random_key(),
        )
        .with_downlink(downlink(&config.media)),
    );
    let data_plane = DataPlane {
        media,
        liveness,
        load,
    };
    let workers = start_workers(
        &config,
        &udp_listen,
        &metrics,
        &turn,
        &auth,
        &shutdown,
        &data_plane,
    )?;

    let tcp_listeners = config
        .turn
        .listen
        .iter()
        .map(|l| bind(l.0, "TCP", tcp::bind_listener(l.0)))
        .collect::<Result<Vec<_>, _>>()?;
    let tls_listeners = config
        .turn
        .tls_listen
        .iter()
        .map(|l| bind(l.0, "TLS", tcp::bind_listener(l.0)))
        .collect::<Result<Vec<_>, _>>()?;
    let http_listener = std::net::TcpListener::bind(config.http.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l));
    let http_listener = bind(config.http.listen, "HTTP", http_listener)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("confnode-control")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control plane: {e}"))?;
    let streams = Streams {
        turn,
        auth,
        epoch,
        tcp: tcp_listeners,
        tls: tls_listeners,
        certs: tls_certs,
    };
    let reload = Reload {
        path,
        running: config.clone(),
        udp_listen,
        other_nodes,
    };
    let result = runtime.block_on(control_plane(
        &config,
        metrics,
        streams,
        http_listener,
        data_plane,
        reload,
    ));

    shutdown.store(true, Ordering::Relaxed);
    for w in &workers {
        let _ = w.waker.wake();
    }
    for w in workers {
        let _ = w.thread.join();
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    tracing::info!("stopped");
    result
}

fn bind<T>(addr: SocketAddr, what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
}

/// One worker per core (or `node.workers`), each with its own socket on every UDP
/// listen address.
fn start_workers(
    config: &Config,
    udp_listen: &[SocketAddr],
    metrics: &Arc<Metrics>,
    turn: &Arc<Shared>,
    auth: &Auth,
    shutdown: &Arc<AtomicBool>,
    data_plane: &DataPlane,
) -> Result<Vec<worker::WorkerHandle>, String> {
    let DataPlane {
        media,
        liveness,
        load,
    } = data_plane;
    let count = config.node.worker_count();
    // Relay sockets bind where the TURN cores' `Shared` says (`turn_shared`).
    let handoff = Arc::new(Handoff::new(
        count,
        turn.ports,
        turn.relay_v4,
        turn.relay_v6,
    ));
    let mut handles = Vec::with_capacity(count);
    for id in 0..count {
        let sockets = udp_listen
            .iter()
            .map(|&a| bind(a, "UDP", udp::bind_shared(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let setup = worker::WorkerSetup {
            id,
            counters: metrics.transport(Transport::Udp),
            turn: TurnCore::with_seed(turn.clone(), auth.clone(), false, random_key()),
            turn_metrics: metrics.turn.clone(),
            shutdown: shutdown.clone(),
            epoch: media.epoch(),
            media: media.clone(),
            handoff: handoff.clone(),
            liveness: liveness.clone(),
            load: load.clone(),
            overload_percent: config.node.overload_percent,
        };
        let handle = worker::spawn(sockets, setup)
            .map_err(|e| format!("cannot start data-plane worker {id}: {e}"))?;
        handles.push(handle);
    }
    tracing::info!(workers = count, "data plane started");
    Ok(handles)
}

/// What the TCP and TLS listeners need: their sockets, what their TURN cores share,
/// and the certificate.
struct Streams {
    turn: Arc<Shared>,
    auth: Auth,
    epoch: std::time::Instant,
    tcp: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    certs: Option<TlsCerts>,
}

/// What the control plane is given of the data plane: the SFU's sessions, the
/// workers' liveness and their load.
struct DataPlane {
    media: Arc<MediaSessions>,
    liveness: Arc<Liveness>,
    load: Arc<Load>,
}

async fn control_plane(
    config: &Config,
    metrics: Arc<Metrics>,
    streams: Streams,
    http_listener: std::net::TcpListener,
    data_plane: DataPlane,
    mut reload: Reload,
) -> Result<(), String> {
    let DataPlane {
        media,
        liveness,
        load,
    } = data_plane;
    let signals = Signals::install()?;
    // TCP and TLS connections together are held to `max_tcp_connections`.
    let limit = Arc::new(Semaphore::new(config.turn.max_tcp_connections));
    let context = |transport| {
        Arc::new(StreamContext {
            transport,
            counters: metrics.transport(transport),
            metrics: metrics.clone(),
            limit: limit.clone(),
            turn: streams.turn.clone(),
            auth: streams.auth.clone(),
            epoch: streams.epoch,
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    let tcp_context = context(Transport::Tcp);
    for l in streams.tcp {
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        tasks.spawn(tcp::serve(l, tcp_context.clone()));
    }
    if let Some(certs) = &streams.certs {
        let tls_context = context(Transport::Tls);
        for l in streams.tls {
            let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
            tasks.spawn(tls::serve(l, tls_context.clone(), certs.acceptor()));
        }
    }
    let http = tokio::net::TcpListener::from_std(http_listener).map_err(|e| e.to_string())?;
    let state = crate::http::AppState::new(config, metrics.clone(), media, liveness.clone())?;
    state.rooms.watch_load(load);
    state.rooms.feed_other_nodes(reload.other_nodes.clone());
    // TURN asks the room API whether a room credential's participant is still in.
    let presence: std::sync::Arc<dyn crate::turn::auth::Presence> = state.rooms.clone();
    let _ = streams
        .auth
        .presence_hook()
        .set(std::sync::Arc::downgrade(&presence));
    let drain = Drain {
        rooms: state.rooms.clone(),
        turn: streams.turn.clone(),
        timeout: std::time::Duration::from_secs(config.node.drain_timeout_s),
    };
    let app = crate::http::router(state);
    let limits = crate::http::serve::ConnectionLimits {
        total: config.http.max_connections,
        per_ip: config.http.max_connections_per_ip,
    };
    tasks.spawn(crate::http::serve::serve(
        http,
        app,
        limits,
        metrics.clone(),
    ));
    let listen: Vec<String> = config.turn.listen.iter().map(|l| l.0.to_string()).collect();
    let tls_listen: Vec<String> = config
        .turn
        .tls_listen
        .iter()
        .map(|l| l.0.to_string())
        .collect();
    tracing::info!(
        turn = %listen.join(","),
        turn_tls = %tls_listen.join(","),
        http = %config.http.listen,
        "confnode {} ready",
        env!("CARGO_PKG_VERSION")
    );
    let live = Live {
        certs: streams.certs.as_ref(),
        auth: &streams.auth,
        turn: &streams.turn,
        rooms: &drain.rooms,
    };
    let result = tokio::select! {
        r = wait_for_signal(signals, &mut reload, &live, &drain) => r,
        () = liveness.wait_gone() => Err("a data-plane worker ended: stopping with a failure \
            status so that the service manager restarts the node".to_owned()),
    };
    tracing::info!("shutting down");
    // Other nodes take this one's rooms at their next join from now on.
    drain.rooms.leave_cluster();
    tasks.shutdown().await;
    result
}

/// The signals the node acts on, caught from before it serves anything: a SIGTERM
/// right after `/api/health` first answers still stops it cleanly.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let err = |e: std::io::Error| format!("cannot install signal handlers: {e}");
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(err)?,
            int: signal(SignalKind::interrupt()).map_err(err)?,
            hup: signal(SignalKind::hangup()).map_err(err)?,
            usr1: signal(SignalKind::user_defined1()).map_err(err)?,
        })
    }
}

/// What a drain (SIGUSR1) stops and waits for.
struct Drain {
    rooms: Arc<crate::http::rooms::RoomsApi>,
    turn: Arc<Shared>,
    /// The longest a drain waits for calls to end.
    timeout: std::time::Duration,
}

impl Drain {
    fn start(&self) {
        self.rooms.start_draining();
        self.turn.start_draining();
        tracing::info!(
            participants = self.rooms.participants(),
            allocations = self.turn.allocations(),
            timeout_s = self.timeout.as_secs(),
            "SIGUSR1: draining; no new rooms, participants or allocations"
        );
    }

    /// Whether the last call has ended: nobody in a room, no TURN allocation.
    fn is_idle(&self) -> bool {
        self.rooms.participants() == 0 && self.turn.allocations() == 0
    }
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the TLS certificate and key (open
/// connections and their allocations stay; a failed reload keeps the old ones); SIGUSR1
/// drains: nothing new is taken, and the node stops once the last call ended or the
/// drain timed out (a SIGTERM meanwhile stops it at once).
async fn wait_for_signal(
    signals: Signals,
    reload: &mut Reload,
    live: &Live<'_>,
    drain: &Drain,
) -> Result<(), String> {
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr1,
    } = signals;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => reload.run(live),
            _ = usr1.recv() => {
                if drain_deadline.is_none() {
                    drain.start();
                    drain_deadline = Some(tokio::time::Instant::now() + drain.timeout);
                }
            }
            _ = tick.tick() => {
                let Some(deadline) = drain_deadline else { continue };
                if drain.is_idle() {
                    tracing::info!("drained: the last call has ended");
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::info!("drain timed out (node.drain_timeout_s): stopping");
                    return Ok(());
                }
            }
        }
    }
}

/// What SIGHUP reads again: the configuration file, against what runs now.
struct Reload {
    path: Option<std::path::PathBuf>,
    /// The configuration in force (TURN REST secrets already the effective ones).
    running: Config,
    udp_listen: Vec<SocketAddr>,
    /// The other live nodes' media addresses, which the peer policy lets through.
    other_nodes: Arc<OtherNodes>,
}

/// What SIGHUP changes in the running node.
struct Live<'a> {
    certs: Option<&'a TlsCerts>,
    auth: &'a Auth,
    turn: &'a Arc<Shared>,
    rooms: &'a Arc<crate::http::rooms::RoomsApi>,
}

impl Reload {
    /// SIGHUP: the TLS certificate and key, then the file's TURN users and REST
    /// secrets, peer lists, TURN limits, host accounts and JWT secret. A file with
    /// errors changes nothing (each error is logged); keys that need a new socket, a
    /// new thread or another store (listen addresses, workers, relay ports, store and
    /// log settings, the realm) take effect at the next start. Allocations, calls and
    /// rooms continue either way.
    fn run(&mut self, live: &Live<'_>) {
        match live.certs.map(TlsCerts::reload) {
            None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Some(Err(e)) => {
                tracing::error!("SIGHUP: TLS certificate not reloaded, the old one stays: {e}")
            }
        }
        let Some(path) = &self.path else {
            tracing::info!("SIGHUP: no configuration file to read again");
            return;
        };
        let new = match Config::from_file(path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("SIGHUP: {}: {e}", path.display());
                }
                tracing::error!("SIGHUP: configuration not reloaded, the running one stays");
                return;
            }
        };
        let next = match self.merged(new) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("SIGHUP: {e}; configuration not reloaded, the running one stays");
                return;
            }
        };
        let t = &next.turn;
        live.auth.replace_credentials(&t.users, &t.auth_secret);
        live.turn
            .replace_settings(turn_settings(&next, &self.udp_listen, &self.other_nodes));
        live.rooms.reload(&next, &t.auth_secret);
        self.running = next;
        tracing::info!(
            "SIGHUP: configuration reloaded (TURN users and secrets, peer lists, limits, \
             host accounts, JWT secret)"
        );
    }

    /// The running configuration with what `new` may change while running.
    fn merged(&self, new: Config) -> Result<Config, String> {
        let mut next = self.running.clone();
        let (t, n) = (&mut next.turn, new.turn);
        t.users = n.users;
        // No secret in the file: the node's own (made at start) stays, so the
        // credentials handed out keep working.
        if n.auth_secret.iter().any(|s| !s.is_empty()) {
            t.auth_secret = effective_turn_secrets(&n.auth_secret);
        }
        t.allow_loopback_peers = n.allow_loopback_peers;
        t.allowed_peers = n.allowed_peers;
        t.denied_peers = n.denied_peers;
        t.max_allocations = n.max_allocations;
        t.max_allocations_per_user = n.max_allocations_per_user;
        t.max_allocations_per_ip = n.max_allocations_per_ip;
        t.max_permissions = n.max_permissions;
        t.max_channels = n.max_channels;
        t.max_bandwidth_kbps = n.max_bandwidth_kbps;
        next.http.hosts = new.http.hosts;
        next.http.jwt_secret = new.http.jwt_secret;
        crate::http::auth::check_host_logins(&next.http)?;
        Ok(next)
    }
}

/// What every TURN core shares, from the configuration.
fn turn_shared(
    config: &Config,
    udp_listen: &[SocketAddr],
    metrics: &Metrics,
    other_nodes: &Arc<OtherNodes>,
) -> Shared {
    let t = &config.turn;
    let (relay_v4, relay_v6) = (
        relay_ip(config, udp_listen, false),
        relay_ip(config, udp_listen, true),
    );
    let Settings { limits, policy } = turn_settings(config, udp_listen, other_nodes);
    Shared::new(
        limits,
        t.relay_ports,
        relay_v4,
        relay_v6,
        config.node.public_ip,
        config.node.public_ipv6,
        policy,
        metrics.turn.clone(),
    )
}

/// The TURN limits and peer policy of `config` (at start, and on SIGHUP).
fn turn_settings(
    config: &Config,
    udp_listen: &[SocketAddr],
    other_nodes: &Arc<OtherNodes>,
) -> Settings {
    let t = &config.turn;
    let limits = Limits {
        max_allocations: t.max_allocations,
        max_allocations_per_user: t.max_allocations_per_user,
        max_allocations_per_ip: t.max_allocations_per_ip,
        max_permissions: t.max_permissions,
        max_channels: t.max_channels,
        bandwidth: t.max_bandwidth_kbps.saturating_mul(1000) / 8,
        ..Limits::default()
    };
    let mut own: Vec<SocketAddr> = udp_listen.to_vec();
    for &l in udp_listen {
        match l {
            SocketAddr::V4(a) => own.push(SocketAddr::from((config.node.public_ip, a.port()))),
            SocketAddr::V6(a) => {
                if let Some(ip) = config.node.public_ipv6 {
                    own.push(SocketAddr::from((ip, a.port())));
                }
            }
        }
    }
    let (relay_v4, relay_v6) = (
        relay_ip(config, udp_listen, false),
        relay_ip(config, udp_listen, true),
    );
    // Every address of the host: peers there are its own services, not media peers.
    let mut host: Vec<IpAddr> = crate::net::udp::interface_addresses().unwrap_or_else(|e| {
        tracing::warn!("cannot list the interface addresses: {e}");
        Vec::new()
    });
    host.push(IpAddr::V4(config.node.public_ip));
    host.extend(config.node.public_ipv6.map(IpAddr::V6));
    host.extend(relay_v4);
    host.extend(relay_v6);
    host.extend(udp_listen.iter().map(SocketAddr::ip));
    host.retain(|ip| !ip.is_unspecified());
    let policy = PeerPolicy::new(
        t.allow_loopback_peers,
        &t.allowed_peers,
        &t.denied_peers,
        &own,
    )
    .with_host(&host, (t.relay_ports.first, t.relay_ports.last))
    .with_nodes(other_nodes.clone());
    Settings { limits, policy }
}

/// The address relay sockets of one family bind to: the first of `turn.relay_ips`
/// of that family, else the first UDP listen address of that family (preferring one
/// that is not loopback, when a wildcard listen address was expanded).
fn relay_ip(config: &Config, udp_listen: &[SocketAddr], v6: bool) -> Option<IpAddr> {
    let t = &config.turn;
    if !t.relay_ips.is_empty() {
        return t.relay_ips.iter().copied().find(|ip| ip.is_ipv6() == v6);
    }
    let family = || {
        udp_listen
            .iter()
            .map(|a| a.ip())
            .filter(move |ip| ip.is_ipv6() == v6)
    };
    family()
        .find(|ip| !ip.is_loopback())
        .or_else(|| family().next())
}

/// The SFU's host candidates (the media port is the first UDP listen port of each
/// family): `node.public_ip` for IPv4; for IPv6 `node.public_ipv6`, else the first
/// IPv6 listen address (one that is not loopback where there is one). IPv4 first.
fn media_candidates(config: &Config, udp_listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    if let Some(v4) = udp_listen.iter().find(|a| a.is_ipv4()) {
        out.push(SocketAddr::new(config.node.public_ip.into(), v4.port()));
    }
    let v6 = || udp_listen.iter().filter(|a| a.is_ipv6());
    if let Some(a) = v6().find(|a| !a.ip().is_loopback()).or_else(|| v6().next()) {
        let ip = config.node.public_ipv6.map_or(a.ip(), IpAddr::from);
        out.push(SocketAddr::new(ip, a.port()));
    }
    out
}

/// The UDP listen addresses, with each wildcard expanded to the host's addresses.
fn udp_listen_addresses(config: &Config) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for l in &config.turn.listen {
        let expanded = udp::expand_wildcard(l.0)
            .map_err(|e| format!("cannot list the host's addresses for {}: {e}", l.0))?;
        if expanded.is_empty() {
            return Err(format!(
                "turn.listen: {} matches no address of this host",
                l.0
            ));
        }
        for a in expanded {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// The TURN REST secrets in force: the configured ones, or, when none is set, one
/// random secret made now, with which the room API signs the TURN credentials it
/// hands to participants (so they work with no secret configured).
pub(crate) fn effective_turn_secrets(configured: &[String]) -> Vec<String> {
    let secrets: Vec<String> = configured
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    if !secrets.is_empty() {
        return secrets;
    }
    vec![random_key().iter().map(|b| format!("{b:02x}")).collect()]
}

/// The node's clock origin: now, on the monotonic and on the wall clock.
pub fn clock_epoch() -> Epoch {
    Epoch {
        instant: std::time::Instant::now(),
        unix_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    }
}

/// The node's DTLS certificate: a fresh key pair, valid from a day ago, with a serial
/// number from the operating system's random source.
pub fn dtls_identity() -> Result<DtlsIdentity, DtlsError> {
    use rand_chacha::ChaCha12Rng;
    use rand_core::SeedableRng;
    let mut rng = ChaCha12Rng::from_seed(random_key());
    DtlsIdentity::generate(time::OffsetDateTime::now_utc(), &mut rng)
}

/// 32 bytes from the operating system's random source (keys made at start).
pub(crate) fn random_key() -> [u8; 32] {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

/// The `[media]` keys as the estimator takes them (bit/s).
fn downlink(media: &MediaConfig) -> BweConfig {
    let bps = |kbps: u32| u64::from(kbps) * 1000;
    BweConfig {
        start_bps: bps(media.downlink_start_kbps),
        min_bps: bps(media.downlink_min_kbps),
        max_bps: bps(media.downlink_max_kbps),
    }
}
