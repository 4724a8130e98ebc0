//! Rooms that outlive the process: what a room link needs after a restart or a crash
//! (its id, its host's keyed hash, when it went idle, whether it is locked), in an
//! embedded store under `store.path`. Participants and media are not kept: a restart
//! ends calls, the link stays.
//!
//! The store is [`redb`]: pure Rust (no C library to build, unlike SQLite), crash-safe
//! (copy-on-write pages, each commit durable before it returns), one small dependency;
//! a table of room id → fixed-size record is all the node asks of it. The API code sees
//! only [`RoomStore`], so a store shared by several nodes can take its place.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use redb::{Database, ReadableTable, TableDefinition};
use sha2::Sha256;

use crate::turn::auth::{hex_decode, hex_encode};

/// Room id → [`StoredRoom::encode`].
const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
/// The file of the key that host names are hashed with.
const HOST_KEY_FILE: &str = "host-key";
const HOST_KEY_LEN: usize = 32;
/// Lowercase hex of 32 bytes.
fn hex(bytes: &[u8; 32]) -> String {
    String::from_utf8_lossy(&hex_encode::<32, 64>(bytes)).into_owned()
}

/// A record: host hash (32), idle since (8, unix seconds), flags (1).
const RECORD_LEN: usize = 41;
const OCCUPIED: u8 = 1;
const LOCKED: u8 = 2;

/// What is kept of one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRoom {
    /// The room id, as in its URL.
    pub id: String,
    /// The keyed hash of its host's name (see [`HostKey`]), as the rooms hold it.
    pub host: String,
    /// Creation, or when its last participant left (unix seconds).
    pub idle_since: u64,
    /// People were in it when this was written: after a crash its calls are over, and
    /// its time to live starts again at the restart.
    pub occupied: bool,
    /// The host locked it: no new participant may join.
    pub locked: bool,
}

impl StoredRoom {
    fn encode(&self) -> Option<[u8; RECORD_LEN]> {
        let host = hex_decode::<32>(self.host.as_bytes())?;
        let mut out = [0u8; RECORD_LEN];
        out[..32].copy_from_slice(&host);
        out[32..40].copy_from_slice(&self.idle_since.to_be_bytes());
        out[40] = (u8::from(self.occupied) * OCCUPIED) | (u8::from(self.locked) * LOCKED);
        Some(out)
    }

    fn decode(id: &str, bytes: &[u8]) -> Option<StoredRoom> {
        let bytes: &[u8; RECORD_LEN] = bytes.try_into().ok()?;
        let mut idle = [0u8; 8];
        idle.copy_from_slice(&bytes[32..40]);
        Some(StoredRoom {
            id: id.to_owned(),
            host: hex(bytes[..32].try_into().ok()?),
            idle_since: u64::from_be_bytes(idle),
            occupied: bytes[40] & OCCUPIED != 0,
            locked: bytes[40] & LOCKED != 0,
        })
    }
}

/// Where rooms are kept. Every call is durable when it returns.
pub trait RoomStore: Send + Sync {
    /// Every room kept (records that cannot be read are skipped and counted in the
    /// second value).
    fn load(&self) -> Result<(Vec<StoredRoom>, usize), String>;
    /// Writes (or overwrites) rooms and removes others, in one transaction.
    fn write(&self, put: &[StoredRoom], remove: &[String]) -> Result<(), String>;
}

/// The node's own store: a redb file under `store.path`.
pub struct RedbStore {
    db: Database,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or makes) `dir/rooms.redb`.
    pub fn open(dir: &Path) -> Result<RedbStore, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("rooms.redb");
        let db = Database::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let store = RedbStore { db };
        // The table exists from the first start on, so reads never miss it.
        store.write(&[], &[])?;
        Ok(store)
    }
}

impl RoomStore for RedbStore {
    fn load(&self) -> Result<(Vec<StoredRoom>, usize), String> {
        let tx = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = tx.open_table(ROOMS).map_err(|e| e.to_string())?;
        let mut rooms = Vec::new();
        let mut bad = 0;
        for entry in table.iter().map_err(|e| e.to_string())? {
            let Ok((id, value)) = entry else {
                bad += 1;
                continue;
            };
            match StoredRoom::decode(id.value(), value.value()) {
                Some(r) => rooms.push(r),
                None => bad += 1,
            }
        }
        Ok((rooms, bad))
    }

    fn write(&self, put: &[StoredRoom], remove: &[String]) -> Result<(), String> {
        let tx = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = tx.open_table(ROOMS).map_err(|e| e.to_string())?;
            for r in put {
                let record = r
                    .encode()
                    .ok_or("a room's host hash is not 32 bytes of hex")?;
                table
                    .insert(r.id.as_str(), record.as_slice())
                    .map_err(|e| e.to_string())?;
            }
            for id in remove {
                table.remove(id.as_str()).map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }
}

/// The key host names are hashed with before a room keeps them: the store holds no
/// host's name in the clear, and without the key (a file of its own, readable by the
/// node's user only) a hash cannot be checked against guessed names.
#[derive(Clone)]
pub struct HostKey([u8; HOST_KEY_LEN]);

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostKey(..)")
    }
}

impl HostKey {
    /// Reads `dir/host-key`, or makes it (random, mode 0600) on the first start.
    pub fn load_or_create(dir: &Path) -> Result<HostKey, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(HOST_KEY_FILE);
        let shown = |e: std::io::Error| format!("{}: {e}", path.display());
        match fs::File::open(&path) {
            Ok(mut f) => {
                let mut key = [0u8; HOST_KEY_LEN];
                f.read_exact(&mut key).map_err(shown)?;
                Ok(HostKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use argon2::password_hash::rand_core::{OsRng, RngCore};
                let mut key = [0u8; HOST_KEY_LEN];
                OsRng.fill_bytes(&mut key);
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(shown)?;
                f.write_all(&key).map_err(shown)?;
                f.sync_all().map_err(shown)?;
                Ok(HostKey(key))
            }
            Err(e) => Err(shown(e)),
        }
    }

    /// A random key (for tests and nodes without a store).
    pub fn random() -> HostKey {
        use argon2::password_hash::rand_core::{OsRng, RngCore};
        let mut key = [0u8; HOST_KEY_LEN];
        OsRng.fill_bytes(&mut key);
        HostKey(key)
    }

    /// The key in hex, as a shared store keeps it for every node.
    pub(crate) fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A key written by [`HostKey::to_hex`].
    pub(crate) fn from_hex(text: &str) -> Option<HostKey> {
        hex_decode::<HOST_KEY_LEN>(text.as_bytes()).map(HostKey)
    }

    /// HMAC-SHA256(key, host name), in hex: what rooms keep as their host.
    pub fn hash(&self, host: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(host.as_bytes());
        hex(&mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: &str, key: &HostKey) -> StoredRoom {
        StoredRoom {
            id: id.to_owned(),
            host: key.hash("dana"),
            idle_since: 1_700_000_000,
            occupied: true,
            locked: false,
        }
    }

    #[test]
    fn rooms_written_are_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let key = HostKey::load_or_create(dir.path()).unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            let mut b = room("b", &key);
            b.locked = true;
            b.occupied = false;
            store
                .write(&[room("a", &key), b, room("c", &key)], &[])
                .unwrap();
            store.write(&[], &["c".to_owned()]).unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        let (mut rooms, bad) = store.load().unwrap();
        rooms.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(bad, 0);
        assert_eq!(rooms.len(), 2);
        assert_eq!(rooms[0], room("a", &key));
        assert!(rooms[1].locked && !rooms[1].occupied);
        // The same key after a restart, and no host name in the files.
        let again = HostKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.hash("dana"), key.hash("dana"));
        assert_ne!(key.hash("dana"), HostKey::random().hash("dana"));
        for entry in fs::read_dir(dir.path()).unwrap() {
            let bytes = fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(4).any(|w| w == b"dana"));
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let key = HostKey::random();
        assert_eq!(
            HostKey::from_hex(&key.to_hex()).map(|k| k.hash("dana")),
            Some(key.hash("dana"))
        );
        assert!(HostKey::from_hex("00").is_none());
        let r = room("x", &key);
        let bytes = r.encode().unwrap();
        assert_eq!(StoredRoom::decode("x", &bytes), Some(r));
        assert_eq!(StoredRoom::decode("x", &bytes[..40]), None);
        let mut bad = room("y", &key);
        bad.host = "dana".into();
        assert!(bad.encode().is_none());
    }
}
