//! Log files as the privacy terms promise them: with `log.dir` set, every log line goes
//! to one file per UTC day, `confnode-YYYY-MM-DD.log`, and files dated more than
//! `log.retention_days` ago are deleted at start and whenever a new day's file opens.
//!
//! What the lines hold is decided where they are written: room ids and, for requests
//! and room events, the client's IP address — never display names, tokens, claims,
//! user agents or TURN usernames.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

use crate::date::{civil_from_days, days_from_civil};

const PREFIX: &str = "confnode-";
const SUFFIX: &str = ".log";

/// A `tracing` writer to the day's file in `dir`.
#[derive(Debug)]
pub struct DailyFiles {
    dir: PathBuf,
    retention_days: u32,
    /// The open file and the day (since 1970-01-01, UTC) it is for.
    current: Mutex<Option<(i64, File)>>,
}

impl DailyFiles {
    /// Makes `dir` if needed, deletes what is past retention, and checks that today's
    /// file can be written.
    pub fn open(dir: &Path, retention_days: u32) -> io::Result<DailyFiles> {
        fs::create_dir_all(dir)?;
        let files = DailyFiles {
            dir: dir.to_owned(),
            retention_days,
            current: Mutex::new(None),
        };
        let today = today();
        purge(dir, retention_days, today)?;
        let file = files.open_day(today)?;
        *files.lock() = Some((today, file));
        Ok(files)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, File)>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open_day(&self, day: i64) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(file_name(day)))
    }

    /// Writes one formatted line (or several) to the day's file, opening the next day's
    /// (and purging) when the date has changed.
    fn write_line(&self, buf: &[u8]) -> io::Result<()> {
        let day = today();
        let mut current = self.lock();
        if current.as_ref().is_none_or(|(d, _)| *d != day) {
            // A failed purge must not lose the line: it is retried the next day.
            let _ = purge(&self.dir, self.retention_days, day);
            *current = Some((day, self.open_day(day)?));
        }
        match current.as_mut() {
            Some((_, file)) => file.write_all(buf),
            None => Ok(()),
        }
    }
}

/// One line's buffer: `tracing` formats an event into it, and it goes to the file in
/// one write when dropped (so lines of several threads never interleave).
pub struct LineWriter<'a> {
    files: &'a DailyFiles,
    buf: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() && self.files.write_line(&self.buf).is_err() {
            // Nowhere else to say it without recursing into the logger.
            let _ = io::stderr().write_all(&self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for DailyFiles {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            files: self,
            buf: Vec::with_capacity(256),
        }
    }
}

/// Deletes this node's log files dated more than `retention_days` before `today`.
/// Other files in the directory are left alone.
pub(crate) fn purge(dir: &Path, retention_days: u32, today: i64) -> io::Result<usize> {
    let mut deleted = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(day) = name.to_str().and_then(day_of_file) else {
            continue;
        };
        if today - day > i64::from(retention_days) {
            fs::remove_file(entry.path())?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Days since 1970-01-01 (UTC) now.
fn today() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 86_400) as i64
}

fn file_name(day: i64) -> String {
    let (y, m, d) = civil_from_days(day).unwrap_or((1970, 1, 1));
    format!("{PREFIX}{y:04}-{m:02}-{d:02}{SUFFIX}")
}

/// The day of a `confnode-YYYY-MM-DD.log` name.
fn day_of_file(name: &str) -> Option<i64> {
    let date = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    days_from_civil(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names() {
        for day in [0, 11_016, 20_000, 20_426, 47_482] {
            assert_eq!(day_of_file(&file_name(day)), Some(day));
        }
        assert_eq!(file_name(11_016), "confnode-2000-02-29.log");
        for bad in [
            "confnode-2000-2-29.log",
            "confnode-2000-13-01.log",
            "confnode-2001-02-29.log",
            "confnode-2000-02-29.log.gz",
            "other-2000-02-29.log",
            "confnode-20x0-02-29.log",
        ] {
            assert_eq!(day_of_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn files_past_retention_go_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let today = 20_426;
        for (day, name) in [
            (today - 61, None),
            (today - 60, None),
            (today - 1, None),
            (today, None),
            (0, Some("notes.txt")),
        ] {
            let name = name.map_or_else(|| file_name(day), str::to_owned);
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(purge(dir.path(), 60, today).unwrap(), 1);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            file_name(today - 60),
            file_name(today - 1),
            file_name(today),
            "notes.txt".to_owned(),
        ];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn lines_go_to_the_days_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let files = DailyFiles::open(dir.path(), 60).unwrap();
        {
            let mut w = files.make_writer();
            w.write_all(b"one ").unwrap();
            w.write_all(b"line\n").unwrap();
        }
        let text = fs::read_to_string(dir.path().join(file_name(today()))).unwrap();
        assert_eq!(text, "one line\n");
    }
}
