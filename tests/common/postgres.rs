//! A throwaway PostgreSQL cluster for the shared-store tests: Debian's `postgresql`
//! binaries (`initdb`, `pg_ctl`), data under a temporary directory, listening on a
//! fresh loopback port only, stopped (and its files removed) when dropped. As root it
//! runs as the `postgres` user, since PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_port;

/// A running cluster; `url` reaches its `postgres` database as superuser `confnode`.
pub struct Postgres {
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    /// `pg_ctl start`'s server options (port, socket directory, ...).
    options: String,
    _dir: tempfile::TempDir,
}

/// The directory of Debian's PostgreSQL programs (the newest installed).
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL's initdb and pg_ctl were not found under /usr/lib/postgresql: \
             install Debian's postgresql package (apt-get install postgresql)"
        )
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// `program args...`, as the `postgres` user when this process is root.
fn run(program: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

impl Postgres {
    /// initdb (trust authentication, no fsync: a test's data need not survive a crash)
    /// and pg_ctl start on a fresh loopback port; waits until it takes connections.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                owned.success(),
                "cannot give the cluster's directory to the postgres user"
            );
        }
        let data = dir.path().join("data");
        let data_s = data.to_str().expect("UTF-8 path").to_owned();
        let init = run(
            &bin.join("initdb"),
            &[
                "-D",
                &data_s,
                "-A",
                "trust",
                "-U",
                "confnode",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        for _ in 0..5 {
            let port = free_port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off",
                dir.path().display()
            );
            let log = dir.path().join("log");
            if pg_start(&bin, &data, &options).status.success() {
                return Postgres {
                    url: format!("postgres://confnode@127.0.0.1:{port}/postgres"),
                    bin,
                    data,
                    options,
                    _dir: dir,
                };
            }
            // A port found free may be taken before the server binds it: try another.
            eprintln!(
                "pg_ctl start failed on port {port}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start, five times");
    }
}

/// `pg_ctl start`, waiting until the server takes connections; its log beside `data`.
fn pg_start(bin: &Path, data: &Path, options: &str) -> std::process::Output {
    let log = data.with_file_name("log");
    run(
        &bin.join("pg_ctl"),
        &[
            "-D",
            data.to_str().expect("UTF-8 path"),
            "-o",
            options,
            "-l",
            log.to_str().expect("UTF-8 path"),
            "-w",
            "-t",
            "60",
            "start",
        ],
    )
}

impl Postgres {
    /// Stops the server (fast shutdown: connections are cut), keeping its data.
    pub fn stop(&self) {
        let data = self.data.to_str().expect("UTF-8 path");
        let stopped = run(
            &self.bin.join("pg_ctl"),
            &["-D", data, "-m", "fast", "-w", "stop"],
        );
        assert!(stopped.status.success(), "pg_ctl stop failed");
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&self) {
        let started = pg_start(&self.bin, &self.data, &self.options);
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap_or_default().to_owned();
        let _ = run(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        );
    }
}
