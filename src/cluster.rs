//! Several nodes sharing rooms through PostgreSQL (`store.url = "postgres://..."`).
//!
//! The database holds what the embedded store holds (each room's id, keyed host hash,
//! idle time and lock), plus which node serves each room and the live set of nodes:
//! each node's public URL (its id), media address, heartbeat and load. A room lives in
//! the memory of one node, its owner; the room API of any other node answers for it
//! with a redirect there ([`Cluster::locate`]). A new room goes to the least-loaded
//! live node that is not draining ([`Cluster::place`]); a node that stops heartbeating
//! leaves placement, and its rooms move to whichever node is asked for them next.
//!
//! The client runs on a thread of its own with its own single-threaded runtime: the
//! store's calls are synchronous (like the embedded store's, they return once durable),
//! so the node's control plane never waits on the database's connection task, and a
//! database that is away costs an error per call (after [`CALL_TIMEOUT`]), never a hang.
//!
//! Privacy: the tables hold room ids, keyed host hashes and the nodes' own addresses;
//! no participant, address of a participant or display name.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use crate::store::{HostKey, RoomStore, StoredRoom};

/// How long a store call waits for the database before it fails.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node writes its heartbeat and reads the live set.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A node whose last heartbeat is older than this has left the live set.
pub(crate) const LIVE_SECS: u32 = 10;
/// How long the thread waits before it connects again after losing the database.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The schema, one step per version; each runs once, in order, in one transaction
/// under an advisory lock, so nodes starting together never apply a step twice.
const MIGRATIONS: &[&str] = &[
    // 1: rooms with their owner, the node set, and the shared host key.
    "CREATE TABLE confnode_rooms (
         id text PRIMARY KEY,
         host text NOT NULL,
         idle_since bigint NOT NULL,
         occupied boolean NOT NULL,
         locked boolean NOT NULL,
         node text NOT NULL);
     CREATE INDEX confnode_rooms_node ON confnode_rooms (node);
     CREATE TABLE confnode_nodes (
         id text PRIMARY KEY,
         media text NOT NULL,
         heartbeat timestamptz NOT NULL,
         load_percent integer NOT NULL,
         draining boolean NOT NULL);
     CREATE TABLE confnode_settings (
         name text PRIMARY KEY,
         value text NOT NULL);",
];
/// Any 64-bit number the nodes agree on: the key of the migrations' advisory lock.
const MIGRATION_LOCK: i64 = 0x636f_6e66_6e6f_6465;

/// A live node, as its last heartbeat told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    /// Its `http.public_url`, which is also its id.
    pub(crate) url: String,
    /// Where its SFU and TURN server take media.
    pub(crate) media: Vec<SocketAddr>,
    /// Its busiest data-plane worker's share of the last second, in percent.
    pub(crate) load_percent: u32,
    /// Rooms it serves.
    pub(crate) rooms: u64,
    /// It drains: no new rooms go to it.
    pub(crate) draining: bool,
}

/// Where a room that this node does not hold in memory is served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Located {
    /// No room by that id.
    Nowhere,
    /// This node serves it from now on: take it into memory.
    Here(StoredRoom),
    /// Another live node serves it: send the client there.
    At(String),
}

/// What this node tells the others with each heartbeat.
#[derive(Debug, Default)]
pub(crate) struct OwnState {
    pub(crate) load_percent: AtomicU32,
    pub(crate) draining: AtomicBool,
}

/// One call to the database thread.
enum Call {
    Load,
    Write(Vec<StoredRoom>, Vec<String>),
    Find(String),
    Claim(String, String),
    Insert(StoredRoom, String),
    HostRooms(String),
    HostKey(String),
    Leave,
}

enum Answer {
    Rooms(Vec<StoredRoom>),
    Done,
    Found(Option<(StoredRoom, String)>),
    Claimed(bool),
    Count(u64),
    Key(String),
}

type Job = (Call, std_mpsc::SyncSender<Result<Answer, String>>);

/// This node's membership of the shared store; as a [`RoomStore`], the rooms this node
/// serves.
#[derive(Debug)]
pub struct Cluster {
    me: String,
    jobs: mpsc::UnboundedSender<Job>,
    live: RwLock<Vec<NodeInfo>>,
    pub(crate) own: OwnState,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Call")
    }
}

impl Cluster {
    /// Connects to `url` on a thread of its own, runs the migrations, and starts the
    /// heartbeat of the node `me` (its public URL) taking media at `media`; rooms idle
    /// for `ttl_secs` leave the store (see [`beat`]). Fails when the database cannot be
    /// reached or migrated within [`CALL_TIMEOUT`].
    pub fn start(
        url: &str,
        me: &str,
        media: Vec<SocketAddr>,
        ttl_secs: u64,
    ) -> Result<std::sync::Arc<Cluster>, String> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let cluster = std::sync::Arc::new(Cluster {
            me: me.to_owned(),
            jobs,
            live: RwLock::new(Vec::new()),
            own: OwnState::default(),
        });
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let weak = std::sync::Arc::downgrade(&cluster);
        let media = media
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        std::thread::Builder::new()
            .name("confnode-store".into())
            .spawn(move || database_thread(config, weak, (media, ttl_secs), rx, ready_tx))
            .map_err(|e| format!("cannot start the store's thread: {e}"))?;
        match ready_rx.recv_timeout(CALL_TIMEOUT) {
            Ok(Ok(())) => Ok(cluster),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the database did not answer".into()),
        }
    }

    /// This node's id (its public URL).
    pub(crate) fn me(&self) -> &str {
        &self.me
    }

    fn call(&self, call: Call) -> Result<Answer, String> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.jobs
            .send((call, tx))
            .map_err(|_| "the store's thread has stopped".to_owned())?;
        rx.recv_timeout(CALL_TIMEOUT)
            .map_err(|_| "the database did not answer in time".to_owned())?
    }

    /// The key host names are hashed with, the same on every node: the first node to
    /// start makes it (`fallback`), the others take it from the database.
    pub(crate) fn host_key(&self, fallback: &HostKey) -> Result<HostKey, String> {
        match self.call(Call::HostKey(fallback.to_hex()))? {
            Answer::Key(hex) => {
                HostKey::from_hex(&hex).ok_or("the shared host key is damaged".into())
            }
            _ => Err("unexpected answer".into()),
        }
    }

    /// The live nodes, as of the last heartbeat.
    pub(crate) fn live(&self) -> Vec<NodeInfo> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_live(&self, node: &str) -> bool {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|n| n.url == node)
    }

    /// Whether a request from `origin` (a browser's `Origin`) comes from one of the live
    /// nodes' pages: those may call this node's API, where redirects send them.
    pub(crate) fn is_node_origin(&self, origin: &str) -> bool {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|n| origin_of(&n.url) == Some(origin))
    }

    /// The node a new room goes to: the least loaded (in steps of 10 %, then by rooms
    /// served) of the live nodes that are not draining; this node when it knows no
    /// other. The choice counts at once, so rooms made between two heartbeats spread too.
    pub(crate) fn place(&self) -> String {
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        let Some(chosen) = live
            .iter_mut()
            .filter(|n| !n.draining)
            .min_by_key(|n| (n.load_percent / 10, n.rooms, n.url != self.me))
        else {
            return self.me.clone();
        };
        chosen.rooms += 1;
        chosen.url.clone()
    }

    /// Keeps a new room that another node is to serve.
    pub(crate) fn insert(&self, room: &StoredRoom, node: &str) -> Result<(), String> {
        self.call(Call::Insert(room.clone(), node.to_owned()))
            .map(|_| ())
    }

    /// Rooms the host (by its keyed hash) holds on every node together.
    pub(crate) fn host_rooms(&self, host: &str) -> Result<u64, String> {
        match self.call(Call::HostRooms(host.to_owned()))? {
            Answer::Count(n) => Ok(n),
            _ => Err("unexpected answer".into()),
        }
    }

    /// Where a room this node does not hold is served. A room of this node (after a
    /// restart) or of a node that has left the live set is taken over here.
    pub(crate) fn locate(&self, room: &str) -> Result<Located, String> {
        // A room whose owner left may be claimed by two nodes at once; the database
        // lets one win, and the other looks again.
        for _ in 0..3 {
            let Answer::Found(found) = self.call(Call::Find(room.to_owned()))? else {
                return Err("unexpected answer".into());
            };
            let Some((stored, owner)) = found else {
                return Ok(Located::Nowhere);
            };
            if owner != self.me && self.is_live(&owner) {
                return Ok(Located::At(owner));
            }
            if owner == self.me {
                return Ok(Located::Here(stored));
            }
            if let Answer::Claimed(true) = self.call(Call::Claim(room.to_owned(), owner))? {
                tracing::info!(room = %room, "room taken over from a node that left");
                return Ok(Located::Here(stored));
            }
        }
        Err("the room's node changed too often".into())
    }

    /// Takes this node out of the live set at once (a clean stop), so that its rooms
    /// move at their next join instead of after [`LIVE_SECS`].
    pub(crate) fn leave(&self) {
        if let Err(e) = self.call(Call::Leave) {
            tracing::warn!("cannot leave the node set: {e}");
        }
    }
}

/// `scheme://host[:port]` of a URL (what a browser sends as `Origin`).
pub(crate) fn origin_of(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    Some(&url[..end])
}

impl RoomStore for Cluster {
    fn load(&self) -> Result<(Vec<StoredRoom>, usize), String> {
        match self.call(Call::Load)? {
            Answer::Rooms(rooms) => Ok((rooms, 0)),
            _ => Err("unexpected answer".into()),
        }
    }

    fn write(&self, put: &[StoredRoom], remove: &[String]) -> Result<(), String> {
        self.call(Call::Write(put.to_vec(), remove.to_vec()))
            .map(|_| ())
    }
}

/// The database thread: connects (again after a loss), migrates, then answers calls
/// and heartbeats until the node is gone.
fn database_thread(
    config: tokio_postgres::Config,
    cluster: std::sync::Weak<Cluster>,
    (media, ttl_secs): (String, u64),
    mut jobs: mpsc::UnboundedReceiver<Job>,
    ready: std_mpsc::SyncSender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the store's runtime: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let mut ready = Some(ready);
        loop {
            match connect(&config).await {
                Ok(client) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                    tracing::info!("connected to the shared store");
                    serve(&client, &cluster, (&media, ttl_secs), &mut jobs).await;
                    if cluster.strong_count() == 0 {
                        return;
                    }
                    tracing::error!("lost the shared store; connecting again");
                }
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    tracing::error!("cannot reach the shared store: {e}");
                }
            }
            // Calls made while the database is away fail at once.
            let wait = tokio::time::sleep(RECONNECT_AFTER);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    job = jobs.recv() => match job {
                        Some((_, reply)) => {
                            let _ = reply.send(Err("the shared store is not reachable".into()));
                        }
                        None => return,
                    },
                }
            }
        }
    });
}

/// Connects and brings the schema up to date.
async fn connect(config: &tokio_postgres::Config) -> Result<Client, String> {
    let (mut client, connection) = tokio::time::timeout(CALL_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| "the database did not answer".to_owned())?
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!("the shared store's connection ended: {e}");
        }
    });
    migrate(&mut client)
        .await
        .map_err(|e| format!("migrating: {e}"))?;
    Ok(client)
}

async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS confnode_schema (version integer NOT NULL)")
        .await?;
    let done: i64 = tx
        .query_one("SELECT count(*) FROM confnode_schema", &[])
        .await?
        .get(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(step).await?;
        tx.execute(
            "INSERT INTO confnode_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
        tracing::info!(version = i + 1, "shared store migrated");
    }
    tx.commit().await
}

/// Answers calls and heartbeats until the connection fails or the node is gone.
async fn serve(
    client: &Client,
    cluster: &std::sync::Weak<Cluster>,
    (media, ttl_secs): (&str, u64),
    jobs: &mut mpsc::UnboundedReceiver<Job>,
) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let Some(c) = cluster.upgrade() else { return };
                match beat(client, &c, media, ttl_secs).await {
                    Ok(live) => {
                        *c.live.write().unwrap_or_else(PoisonError::into_inner) = live;
                    }
                    Err(e) => {
                        tracing::error!("heartbeat: {e}");
                        if client.is_closed() {
                            return;
                        }
                    }
                }
            }
            job = jobs.recv() => {
                let Some((call, reply)) = job else { return };
                let Some(c) = cluster.upgrade() else { return };
                let answer = answer(client, &c.me, call).await.map_err(|e| e.to_string());
                let _ = reply.send(answer);
                if client.is_closed() {
                    return;
                }
            }
        }
    }
}

/// Writes this node's heartbeat, removes expired rooms that no live node holds (a room
/// placed on a node that never took it, or whose node left: nobody else removes them),
/// and reads the live set.
async fn beat(
    client: &Client,
    c: &Cluster,
    media: &str,
    ttl_secs: u64,
) -> Result<Vec<NodeInfo>, tokio_postgres::Error> {
    let load = c.own.load_percent.load(Ordering::Relaxed) as i32;
    let draining = c.own.draining.load(Ordering::Relaxed);
    client
        .execute(
            "INSERT INTO confnode_nodes (id, media, heartbeat, load_percent, draining)
             VALUES ($1, $2, now(), $3, $4)
             ON CONFLICT (id) DO UPDATE SET media = $2, heartbeat = now(),
                 load_percent = $3, draining = $4",
            &[&c.me, &media, &load, &draining],
        )
        .await?;
    // An occupied room's idle time starts again when a node takes it over, so one of
    // a live node is left to that node.
    client
        .execute(
            "DELETE FROM confnode_rooms
             WHERE idle_since < extract(epoch FROM now())::bigint - $1
               AND (NOT occupied OR node NOT IN (
                   SELECT id FROM confnode_nodes
                   WHERE heartbeat > now() - make_interval(secs => $2)))",
            &[
                &(ttl_secs.min(i64::MAX as u64) as i64),
                &f64::from(LIVE_SECS),
            ],
        )
        .await?;
    let rows = client
        .query(
            "SELECT n.id, n.media, n.load_percent, n.draining,
                    (SELECT count(*) FROM confnode_rooms r WHERE r.node = n.id)
             FROM confnode_nodes n
             WHERE n.heartbeat > now() - make_interval(secs => $1)
             ORDER BY n.id",
            &[&f64::from(LIVE_SECS)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| NodeInfo {
            url: row.get(0),
            media: row
                .get::<_, &str>(1)
                .split_whitespace()
                .filter_map(|a| a.parse().ok())
                .collect(),
            load_percent: row.get::<_, i32>(2).max(0) as u32,
            draining: row.get(3),
            rooms: row.get::<_, i64>(4).max(0) as u64,
        })
        .collect())
}

/// Writes a room of `node`. Only that node's rooms are overwritten: a room another
/// node took over (while this one was thought gone) stays with it.
async fn put_room(
    client: &Client,
    r: &StoredRoom,
    node: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO confnode_rooms (id, host, idle_since, occupied, locked, node)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET host = $2, idle_since = $3,
                 occupied = $4, locked = $5
             WHERE confnode_rooms.node = $6",
            &[
                &r.id,
                &r.host,
                &(r.idle_since as i64),
                &r.occupied,
                &r.locked,
                &node,
            ],
        )
        .await
        .map(|_| ())
}

fn room_from_row(row: &tokio_postgres::Row) -> StoredRoom {
    StoredRoom {
        id: row.get("id"),
        host: row.get("host"),
        idle_since: row.get::<_, i64>("idle_since").max(0) as u64,
        occupied: row.get("occupied"),
        locked: row.get("locked"),
    }
}

async fn answer(client: &Client, me: &str, call: Call) -> Result<Answer, tokio_postgres::Error> {
    const COLUMNS: &str = "id, host, idle_since, occupied, locked, node";
    match call {
        Call::Load => {
            let rows = client
                .query(
                    &format!("SELECT {COLUMNS} FROM confnode_rooms WHERE node = $1"),
                    &[&me],
                )
                .await?;
            Ok(Answer::Rooms(rows.iter().map(room_from_row).collect()))
        }
        Call::Write(put, remove) => {
            for r in &put {
                put_room(client, r, me).await?;
            }
            if !remove.is_empty() {
                client
                    .execute(
                        "DELETE FROM confnode_rooms WHERE id = ANY($1) AND node = $2",
                        &[&remove, &me],
                    )
                    .await?;
            }
            Ok(Answer::Done)
        }
        Call::Find(id) => {
            let row = client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM confnode_rooms WHERE id = $1"),
                    &[&id],
                )
                .await?;
            Ok(Answer::Found(
                row.map(|row| (room_from_row(&row), row.get("node"))),
            ))
        }
        Call::Claim(id, from) => {
            let n = client
                .execute(
                    "UPDATE confnode_rooms SET node = $1 WHERE id = $2 AND node = $3",
                    &[&me, &id, &from],
                )
                .await?;
            Ok(Answer::Claimed(n == 1))
        }
        Call::Insert(r, node) => {
            put_room(client, &r, &node).await?;
            Ok(Answer::Done)
        }
        Call::HostRooms(host) => {
            let row = client
                .query_one(
                    "SELECT count(*) FROM confnode_rooms WHERE host = $1",
                    &[&host],
                )
                .await?;
            Ok(Answer::Count(row.get::<_, i64>(0).max(0) as u64))
        }
        Call::HostKey(fallback) => {
            client
                .execute(
                    "INSERT INTO confnode_settings (name, value) VALUES ('host_key', $1)
                     ON CONFLICT (name) DO NOTHING",
                    &[&fallback],
                )
                .await?;
            let row = client
                .query_one(
                    "SELECT value FROM confnode_settings WHERE name = 'host_key'",
                    &[],
                )
                .await?;
            Ok(Answer::Key(row.get(0)))
        }
        Call::Leave => {
            client
                .execute("DELETE FROM confnode_nodes WHERE id = $1", &[&me])
                .await?;
            Ok(Answer::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_of_public_urls() {
        assert_eq!(
            origin_of("https://a.example/x/y"),
            Some("https://a.example")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8080"),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin_of("nothing"), None);
    }
}
