//! The configuration file (`config.toml`): every key of the README's "Configuration",
//! with its default.
//!
//! A file is checked key by key so that one run reports every mistake, each with its
//! dotted key and the line it is on: the whole section is deserialised first, and only
//! when that fails is each key tried alone to find which ones are wrong.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The whole configuration; `Config::default()` is the built-in loopback setup.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub(crate) node: NodeConfig,
    /// `[turn]`: listeners, TLS, realm, secrets and limits of the TURN server.
    pub turn: TurnConfig,
    pub(crate) http: HttpConfig,
    pub(crate) rooms: RoomsConfig,
    pub(crate) media: MediaConfig,
    pub(crate) store: StoreConfig,
    /// `[log]`: level and destination of the log.
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct NodeConfig {
    /// IPv4 address put into XOR-RELAYED-ADDRESS and ICE candidates.
    pub(crate) public_ip: Ipv4Addr,
    /// The same for IPv6; `None` ("" in the file) means the relay address itself.
    #[serde(deserialize_with = "optional_ipv6")]
    pub(crate) public_ipv6: Option<Ipv6Addr>,
    /// Data-plane threads; 0 means one per CPU core.
    pub(crate) workers: usize,
    /// After SIGUSR1 (drain), the node exits when the last call ends, or after this
    /// many seconds at most.
    pub(crate) drain_timeout_s: u64,
    /// New allocations (508) and joins (503) are refused while a data-plane worker
    /// is busier than this share of its time (see `load`); 0 never refuses.
    pub(crate) overload_percent: u8,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            public_ip: Ipv4Addr::LOCALHOST,
            public_ipv6: None,
            workers: 0,
            drain_timeout_s: 3600,
            overload_percent: 90,
        }
    }
}

impl NodeConfig {
    /// The number of data-plane workers to start.
    pub(crate) fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// The `[turn]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    pub(crate) listen: Vec<ListenAddr>,
    /// TURN over TLS listeners (TCP); none unless given.
    pub tls_listen: Vec<ListenAddr>,
    /// PEM certificate chain for `tls_listen`.
    pub tls_cert: PathBuf,
    /// PEM private key for `tls_cert`.
    pub tls_key: PathBuf,
    pub(crate) realm: String,
    /// TURN REST API secrets: one string, or a list while a new one is rolled out.
    #[serde(deserialize_with = "one_or_many")]
    pub(crate) auth_secret: Vec<String>,
    pub(crate) users: BTreeMap<String, String>,
    pub(crate) relay_ports: PortRange,
    pub(crate) relay_ips: Vec<IpAddr>,
    pub(crate) allow_loopback_peers: bool,
    pub(crate) allowed_peers: Vec<Cidr>,
    pub(crate) denied_peers: Vec<Cidr>,
    /// TCP and TLS client connections held at once; more are refused at accept.
    pub(crate) max_tcp_connections: usize,
    /// Allocations held at once, by all users together.
    pub(crate) max_allocations: usize,
    /// Allocations one username may hold at once.
    pub(crate) max_allocations_per_user: u32,
    /// Allocations one client address (an IPv6 /64) holds at once, EVEN-PORT
    /// reservations included.
    pub(crate) max_allocations_per_ip: u32,
    /// Permissions and channels one allocation may hold.
    pub(crate) max_permissions: usize,
    pub(crate) max_channels: usize,
    /// Relayed kilobits per second one allocation may use; 0 = no cap.
    pub(crate) max_bandwidth_kbps: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            listen: vec![ListenAddr(SocketAddr::from((Ipv4Addr::LOCALHOST, 3478)))],
            tls_listen: Vec::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            realm: "confnode".to_owned(),
            auth_secret: Vec::new(),
            users: BTreeMap::new(),
            relay_ports: PortRange {
                first: 49152,
                last: 65535,
            },
            relay_ips: Vec::new(),
            allow_loopback_peers: false,
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
            max_tcp_connections: 10_000,
            max_allocations: 100_000,
            max_allocations_per_user: 1_000,
            max_allocations_per_ip: 1024,
            max_permissions: 64,
            max_channels: 64,
            max_bandwidth_kbps: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) public_url: PublicUrl,
    pub(crate) jwt_secret: String,
    pub(crate) hosts: Vec<HostAccount>,
    /// Origins (`https://meet.example.org`) of a separate web page whose scripts may
    /// call the API; the reference page, served by the node itself, needs none.
    pub(crate) cors_origins: Vec<String>,
    /// HTTP connections open at once, all clients together (event streams included).
    pub(crate) max_connections: usize,
    /// HTTP connections one client address (an IPv6 /64) may hold open.
    pub(crate) max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            public_url: PublicUrl("http://localhost:8080".to_owned()),
            jwt_secret: String::new(),
            hosts: Vec::new(),
            cors_origins: Vec::new(),
            max_connections: 4096,
            max_connections_per_ip: 256,
        }
    }
}

/// A host account that may create rooms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostAccount {
    pub(crate) name: String,
    pub(crate) password_hash: PasswordHash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RoomsConfig {
    pub(crate) ttl_hours: u32,
    pub(crate) max_participants: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            ttl_hours: 24,
            max_participants: 50,
        }
    }
}

/// The SFU's media: each receiver's downlink bandwidth estimate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MediaConfig {
    /// Where a receiver's estimate starts before its feedback says more, kbit/s.
    pub(crate) downlink_start_kbps: u32,
    /// The estimate never goes below this (audio and the lowest layers fit), kbit/s.
    pub(crate) downlink_min_kbps: u32,
    /// Nor above this, kbit/s.
    pub(crate) downlink_max_kbps: u32,
}

impl Default for MediaConfig {
    /// Jitsi Videobridge's start, floor and ceiling.
    fn default() -> Self {
        MediaConfig {
            downlink_start_kbps: 2_500,
            downlink_min_kbps: 30,
            downlink_max_kbps: 20_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StoreConfig {
    pub(crate) path: PathBuf,
    /// `postgres://...`: rooms and the live node set in PostgreSQL, shared with other
    /// nodes (see `cluster`); empty, the embedded store under `path` alone.
    pub(crate) url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("confnode-data"),
            url: String::new(),
        }
    }
}

/// The `[log]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The least severe level written.
    pub level: LogLevel,
    /// Log files are deleted once dated more than this many days ago.
    pub retention_days: u32,
    /// With a directory, logs go to one file per UTC day there
    /// (`confnode-YYYY-MM-DD.log`); empty, to stderr (journald under systemd).
    pub dir: PathBuf,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            retention_days: 60,
            dir: PathBuf::new(),
        }
    }
}

/// `log.level`, from the most severe to the most verbose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Start, stop, reloads and refusals worth knowing (the default).
    Info,
    /// Per-session events.
    Debug,
    /// Per-packet detail.
    Trace,
}

impl LogLevel {
    /// The `tracing` level the subscriber filters on.
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// A listen address: `"127.0.0.1:3478"`, `"[::1]:3478"`, or `":443"` for every IPv4
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl TryFrom<String> for ListenAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Some(port) = s.strip_prefix(':') {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("invalid port in listen address {s:?}"))?;
            return Ok(ListenAddr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))));
        }
        s.parse().map(ListenAddr).map_err(|_| {
            format!(
                "invalid listen address {s:?}: expected \"IP:PORT\", \"[IPv6]:PORT\" or \":PORT\""
            )
        })
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ListenAddr::try_from(s).map_err(serde::de::Error::custom)
    }
}

/// An inclusive UDP port range for relay sockets, written `"49152-65535"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The lowest port, included.
    pub first: u16,
    /// The highest port, included.
    pub last: u16,
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_port_range(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let bad = || format!("invalid port range {s:?}: expected \"FIRST-LAST\", e.g. \"49152-65535\"");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let first: u16 = a.trim().parse().map_err(|_| bad())?;
    let last: u16 = b.trim().parse().map_err(|_| bad())?;
    if first == 0 || first > last {
        return Err(format!(
            "invalid port range {s:?}: the first port must be at least 1 and not above the last"
        ));
    }
    Ok(PortRange { first, last })
}

/// An address block, `"10.0.0.0/8"`, `"2001:db8::/32"`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this block (families must match; callers canonicalise first).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid address block {s:?}: expected \"ADDRESS/PREFIX\"");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(format!("invalid address block {s:?}: prefix above {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The base URL of the room links handed out (`http://` or `https://`, no trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicUrl(pub String);

impl<'de> Deserialize<'de> for PublicUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid URL {s:?}: must start with http:// or https://"
                ))
            })?;
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(serde::de::Error::custom(format!(
                "invalid URL {s:?}: no host"
            )));
        }
        Ok(PublicUrl(s.trim_end_matches('/').to_owned()))
    }
}

/// An argon2id PHC string, checked for form when the file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswordHash(pub String);

impl<'de> Deserialize<'de> for PasswordHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parsed = argon2::PasswordHash::new(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "not a PHC password hash ({e}); make one with `confnode hash-password`"
            ))
        })?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(serde::de::Error::custom(
                "the password hash must be argon2id; make one with `confnode hash-password`",
            ));
        }
        Ok(PasswordHash(s))
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let secrets = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    Ok(secrets.into_iter().filter(|s| !s.is_empty()).collect())
}

fn optional_ipv6<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Ipv6Addr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("invalid IPv6 address {s:?}")))
}

/// One mistake in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `turn.listen`; empty for a syntax error.
    pub(crate) key: String,
    /// 1-based line, where it could be found.
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Every mistake found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and checks a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: String::new(),
                line: None,
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::from_toml(&text)
    }

    /// Parses and checks configuration text, collecting every error.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError {
                key: String::new(),
                line: e.span().map(|s| line_at(text, s.start)),
                message: e.message().trim().to_owned(),
            }])
        })?;
        let mut errors = Vec::new();
        let mut config = Config::default();
        for (name, value) in &root {
            let Some(table) = value.as_table() else {
                errors.push(ConfigError {
                    key: name.clone(),
                    line: find_line(text, "", name),
                    message: format!("expected a [{name}] section"),
                });
                continue;
            };
            match name.as_str() {
                "node" => section(text, name, table, &mut errors, &mut config.node),
                "turn" => section(text, name, table, &mut errors, &mut config.turn),
                "http" => section(text, name, table, &mut errors, &mut config.http),
                "rooms" => section(text, name, table, &mut errors, &mut config.rooms),
                "media" => section(text, name, table, &mut errors, &mut config.media),
                "store" => section(text, name, table, &mut errors, &mut config.store),
                "log" => section(text, name, table, &mut errors, &mut config.log),
                _ => errors.push(ConfigError {
                    key: name.clone(),
                    line: find_section_line(text, name),
                    message: "unknown section; expected one of node, turn, http, rooms, media, store, log"
                        .to_owned(),
                }),
            }
        }
        if errors.is_empty() {
            errors.extend(config.cross_check(text));
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Checks that span several keys, after each key parsed on its own.
    fn cross_check(&self, text: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |section: &str, key: &str, message: &str| {
            errors.push(ConfigError {
                key: format!("{section}.{key}"),
                line: find_line(text, section, key),
                message: message.to_owned(),
            })
        };
        if self.turn.listen.is_empty() {
            err("turn", "listen", "at least one listen address is needed");
        }
        if self.node.overload_percent > 100 {
            err(
                "node",
                "overload_percent",
                "must be 0 (never refuse) to 100",
            );
        }
        if !self.turn.tls_listen.is_empty() {
            if self.turn.tls_cert.as_os_str().is_empty() {
                err(
                    "turn",
                    "tls_cert",
                    "tls_listen is set, so a certificate path is needed",
                );
            }
            if self.turn.tls_key.as_os_str().is_empty() {
                err(
                    "turn",
                    "tls_key",
                    "tls_listen is set, so a key path is needed",
                );
            }
        }
        if self.http.hosts.is_empty()
            && self.http.jwt_secret.is_empty()
            && !self.http.listen.ip().is_loopback()
        {
            err(
                "http",
                "hosts",
                "http.listen is not a loopback address, so at least one [[http.hosts]] account \
                 is needed (or http.jwt_secret); make its password_hash with \
                 `confnode hash-password`",
            );
        }
        // HS256 with a short secret can be brute-forced offline from one token.
        if !self.http.jwt_secret.is_empty() && self.http.jwt_secret.len() < 32 {
            err(
                "http",
                "jwt_secret",
                "must be at least 32 bytes (e.g. `openssl rand -base64 32`), or empty",
            );
        }
        for origin in &self.http.cors_origins {
            if !is_origin(origin) {
                err(
                    "http",
                    "cors_origins",
                    "each entry must be an origin: scheme://host[:port], no path, no \"*\"",
                );
            }
        }
        if self.rooms.ttl_hours == 0 {
            err("rooms", "ttl_hours", "must be at least 1");
        }
        if self.rooms.max_participants < 2 {
            err("rooms", "max_participants", "must be at least 2");
        }
        let m = &self.media;
        if m.downlink_min_kbps == 0 {
            err("media", "downlink_min_kbps", "must be at least 1");
        }
        if m.downlink_max_kbps < m.downlink_min_kbps {
            err(
                "media",
                "downlink_max_kbps",
                "must be at least media.downlink_min_kbps",
            );
        }
        if !(m.downlink_min_kbps..=m.downlink_max_kbps).contains(&m.downlink_start_kbps) {
            err(
                "media",
                "downlink_start_kbps",
                "must be between media.downlink_min_kbps and media.downlink_max_kbps",
            );
        }
        if !self.store.url.is_empty() {
            if !(self.store.url.starts_with("postgres://")
                || self.store.url.starts_with("postgresql://"))
            {
                err("store", "url", "must be a postgres:// URL, or empty");
            }
            if self.turn.auth_secret.iter().all(String::is_empty) {
                err(
                    "store",
                    "url",
                    "nodes sharing a store must share turn.auth_secret too: each checks the \
                     TURN credentials the others hand out",
                );
            }
        }
        if self.store.path.as_os_str().is_empty() {
            err("store", "path", "must not be empty");
        }
        if self.log.retention_days == 0 {
            err("log", "retention_days", "must be at least 1");
        }
        for (key, value) in [
            ("max_connections", self.http.max_connections),
            ("max_connections_per_ip", self.http.max_connections_per_ip),
        ] {
            if value == 0 {
                err("http", key, "must be at least 1");
            }
        }
        for (key, value) in [
            ("max_tcp_connections", self.turn.max_tcp_connections),
            ("max_allocations", self.turn.max_allocations),
            (
                "max_allocations_per_user",
                self.turn.max_allocations_per_user as usize,
            ),
            (
                "max_allocations_per_ip",
                self.turn.max_allocations_per_ip as usize,
            ),
            ("max_permissions", self.turn.max_permissions),
            ("max_channels", self.turn.max_channels),
        ] {
            if value == 0 {
                err("turn", key, "must be at least 1");
            }
        }
        errors
    }
}

/// `http(s)://host[:port]` exactly: what a browser sends in `Origin`.
fn is_origin(text: &str) -> bool {
    let Some(rest) = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// Deserialises one section into `out`; on failure, tries each key alone so that every
/// wrong key is reported, not only the first.
fn section<T: DeserializeOwned>(
    text: &str,
    name: &str,
    table: &toml::Table,
    errors: &mut Vec<ConfigError>,
    out: &mut T,
) {
    match toml::Value::Table(table.clone()).try_into::<T>() {
        Ok(v) => *out = v,
        Err(whole) => {
            let before = errors.len();
            for (key, value) in table {
                let mut one = toml::Table::new();
                one.insert(key.clone(), value.clone());
                if let Err(e) = toml::Value::Table(one).try_into::<T>() {
                    errors.push(ConfigError {
                        key: format!("{name}.{key}"),
                        line: find_line(text, name, key),
                        message: e.message().trim().to_owned(),
                    });
                }
            }
            if errors.len() == before {
                errors.push(ConfigError {
                    key: name.to_owned(),
                    line: find_section_line(text, name),
                    message: whole.message().trim().to_owned(),
                });
            }
        }
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of `[section]` (or `[[section...]]`).
fn find_section_line(text: &str, section: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            header_of(l).is_some_and(|h| h == section || h.starts_with(&format!("{section}.")))
        })
        .map(|i| i + 1)
}

/// The line where `key` is set inside `[section]` (or `[[section.key]]` for arrays of
/// tables). A best effort: the key is reported with or without it.
fn find_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let nested = format!("{section}.{key}");
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(h) = header_of(line) {
            if h == nested {
                return Some(i + 1);
            }
            current = h.to_owned();
            continue;
        }
        let in_section = current == section || (section.is_empty() && current.is_empty());
        if !in_section {
            continue;
        }
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

/// The name in a `[name]` or `[[name]]` header line.
fn header_of(line: &str) -> Option<&str> {
    let t = line.split('#').next().unwrap_or("").trim();
    let inner = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]"));
    let inner = inner.or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))?;
    Some(inner.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_loopback_defaults() {
        let c = Config::from_toml("").expect("empty config is valid");
        assert_eq!(c.turn.listen[0].0, "127.0.0.1:3478".parse().expect("addr"));
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(
            c.turn.relay_ports,
            PortRange {
                first: 49152,
                last: 65535
            }
        );
        assert_eq!(c.log.retention_days, 60);
        assert_eq!(c.rooms.max_participants, 50);
    }

    #[test]
    fn shipped_config_toml_is_valid_and_matches_defaults() {
        let text = include_str!("../config.toml");
        let c = Config::from_toml(text).unwrap_or_else(|e| panic!("shipped config.toml: {e}"));
        let d = Config::default();
        assert_eq!(c.turn.listen, d.turn.listen);
        assert_eq!(c.turn.realm, d.turn.realm);
        assert_eq!(c.http.listen, d.http.listen);
        assert_eq!(c.http.public_url, d.http.public_url);
        assert_eq!(c.rooms.ttl_hours, d.rooms.ttl_hours);
        assert_eq!(c.media.downlink_start_kbps, d.media.downlink_start_kbps);
        assert_eq!(c.media.downlink_min_kbps, d.media.downlink_min_kbps);
        assert_eq!(c.media.downlink_max_kbps, d.media.downlink_max_kbps);
        assert_eq!(c.log.level, d.log.level);
    }

    #[test]
    fn downlink_bounds_must_hold_together() {
        let text = "[media]\ndownlink_start_kbps = 50000\ndownlink_min_kbps = 0\n";
        let errs = Config::from_toml(text).expect_err("must fail").0;
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"media.downlink_min_kbps"), "{errs:?}");
        assert!(keys.contains(&"media.downlink_start_kbps"), "{errs:?}");
        let c = Config::from_toml("[media]\ndownlink_max_kbps = 8000\n").unwrap();
        assert_eq!(c.media.downlink_max_kbps, 8000);
    }

    #[test]
    fn typo_and_bad_value_are_all_reported_with_key_and_line() {
        let text = "[turn]\nlisten = [\"127.0.0.1:3478\"]\nliste = 1\nrelay_ports = \"9-2\"\n\n[node]\nworkers = \"two\"\n";
        let errs = Config::from_toml(text).expect_err("must fail").0;
        let keys: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(keys.contains(&("turn.liste", Some(3))), "{errs:?}");
        assert!(keys.contains(&("turn.relay_ports", Some(4))), "{errs:?}");
        assert!(keys.contains(&("node.workers", Some(7))), "{errs:?}");
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn unknown_section_and_syntax_errors_are_reported() {
        let errs = Config::from_toml("[tunr]\nx = 1\n")
            .expect_err("unknown section")
            .0;
        assert_eq!(errs[0].key, "tunr");
        assert_eq!(errs[0].line, Some(1));
        let errs = Config::from_toml("[turn]\nlisten = [\n")
            .expect_err("syntax")
            .0;
        assert!(errs[0].line.is_some());
    }

    #[test]
    fn public_http_needs_hosts() {
        let errs = Config::from_toml("[http]\nlisten = \"0.0.0.0:8080\"\n")
            .expect_err("no hosts")
            .0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "http.hosts");
        assert!(Config::from_toml("[http]\nlisten = \"[::1]:8080\"\n").is_ok());
        assert!(
            Config::from_toml("[http]\nlisten = \"0.0.0.0:8080\"\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n").is_ok()
        );
        let hash = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$4v3Q0u3XDsJ1Ptq6nXl0hA";
        let text = format!(
            "[http]\nlisten = \"0.0.0.0:8080\"\n[[http.hosts]]\nname = \"a\"\npassword_hash = \"{hash}\"\n"
        );
        assert!(Config::from_toml(&text).is_ok());
    }

    #[test]
    fn host_hash_must_be_argon2id() {
        let text = "[[http.hosts]]\nname = \"host\"\npassword_hash = \"plain\"\n";
        let errs = Config::from_toml(text).expect_err("bad hash").0;
        assert_eq!(errs[0].key, "http.hosts");
        assert!(errs[0].message.contains("hash-password"), "{errs:?}");
    }

    #[test]
    fn short_jwt_secrets_are_refused() {
        let errs = Config::from_toml("[http]\njwt_secret = \"short\"\n")
            .expect_err("short")
            .0;
        assert_eq!(errs[0].key, "http.jwt_secret", "{errs:?}");
        let long = "[http]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n";
        assert!(Config::from_toml(long).is_ok());
    }

    #[test]
    fn a_shared_store_needs_a_postgres_url_and_a_shared_turn_secret() {
        let url = "[store]\nurl = \"postgres://confnode@db.example.org/confnode\"\n";
        let errs = Config::from_toml(url).expect_err("no TURN secret").0;
        assert_eq!(errs[0].key, "store.url", "{errs:?}");
        assert!(errs[0].message.contains("turn.auth_secret"), "{errs:?}");
        let with_secret = format!("[turn]\nauth_secret = \"s3cret\"\n{url}");
        assert!(Config::from_toml(&with_secret).is_ok());
        let mysql = "[turn]\nauth_secret = \"s\"\n[store]\nurl = \"mysql://db/x\"\n";
        let errs = Config::from_toml(mysql).expect_err("not postgres").0;
        assert_eq!(errs[0].key, "store.url", "{errs:?}");
        assert!(Config::default().store.url.is_empty());
    }

    #[test]
    fn cors_origins_must_be_origins() {
        let ok = "[http]\ncors_origins = [\"https://meet.example.org\", \"http://[::1]:8000\"]\n";
        assert_eq!(
            Config::from_toml(ok)
                .expect("valid")
                .http
                .cors_origins
                .len(),
            2
        );
        for bad in [
            "*",
            "https://meet.example.org/path",
            "meet.example.org",
            "https://",
        ] {
            let text = format!("[http]\ncors_origins = [\"{bad}\"]\n");
            let errs = Config::from_toml(&text).expect_err(bad).0;
            assert_eq!(errs[0].key, "http.cors_origins", "{bad}: {errs:?}");
        }
    }

    #[test]
    fn listen_forms() {
        let c = Config::from_toml("[turn]\nlisten = [\"[::1]:3478\"]\ntls_listen = [\":443\"]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n")
            .expect("valid");
        assert_eq!(c.turn.listen[0].0, "[::1]:3478".parse().expect("addr"));
        assert_eq!(c.turn.tls_listen[0].0, "0.0.0.0:443".parse().expect("addr"));
        let errs = Config::from_toml("[turn]\ntls_listen = [\":443\"]\n")
            .expect_err("no cert")
            .0;
        assert!(errs.iter().any(|e| e.key == "turn.tls_cert"), "{errs:?}");
    }

    #[test]
    fn cidr_contains() {
        let c: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert!(c.contains("10.1.2.3".parse().expect("ip")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        let all: Cidr = "::/0".parse().expect("cidr");
        assert!(all.contains("::1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
