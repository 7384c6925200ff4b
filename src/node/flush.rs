//! Drive flushes shared by concurrent erasers.
//!
//! Every erase ends with a flush of its drive, so "erased" survives a power
//! cut. A flush covers every write the drive completed before it started, so
//! erasers that finish zeroing while one flush runs can all be covered by the
//! next one instead of each waiting for its own: a burst of deletes on one
//! drive costs a flush or two, not one each. A caller returns only after a
//! flush that started after its call (so after its own writes) has ended,
//! with that flush's outcome.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// One drive's flushes, numbered in the order they started.
#[derive(Default)]
struct DriveFlushes {
    state: Mutex<FlushState>,
    ended: Condvar,
}

#[derive(Default)]
struct FlushState {
    /// The number of the newest flush started.
    started: u64,
    /// The newest flush ended, and how it failed if it did.
    ended: u64,
    failure: Option<String>,
    running: bool,
}

/// The flushes of every drive this process erases on.
#[derive(Default)]
pub struct Flushes {
    drives: Mutex<HashMap<PathBuf, Arc<DriveFlushes>>>,
}

impl Flushes {
    /// The process's flushes: erasers of one drive share them wherever they run.
    pub fn global() -> &'static Flushes {
        static FLUSHES: OnceLock<Flushes> = OnceLock::new();
        FLUSHES.get_or_init(Flushes::default)
    }

    /// Returns once a flush of `drive` (through `file`, open on it) that
    /// started after this call has ended: its outcome. Blocking.
    pub fn flush(&self, drive: &Path, file: &File) -> std::io::Result<()> {
        self.flush_with(drive, || file.sync_all())
    }

    fn flush_with(
        &self,
        drive: &Path,
        sync: impl Fn() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let flushes = self.of(drive);
        let mut state = lock(&flushes.state);
        // Flush number `needed` or later starts after this moment.
        let needed = state.started + 1;
        loop {
            if state.ended >= needed {
                return match &state.failure {
                    None => Ok(()),
                    Some(reason) => Err(std::io::Error::other(reason.clone())),
                };
            }
            if !state.running {
                state.running = true;
                state.started += 1;
                let number = state.started;
                drop(state);
                let failure = sync().err().map(|e| e.to_string());
                state = lock(&flushes.state);
                state.running = false;
                state.ended = number;
                state.failure = failure;
                flushes.ended.notify_all();
                continue;
            }
            state = flushes.ended.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn of(&self, drive: &Path) -> Arc<DriveFlushes> {
        lock(&self.drives)
            .entry(drive.to_path_buf())
            .or_default()
            .clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is replaced field by field under the lock and stays valid.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn callers_waiting_during_a_flush_share_the_next_one() {
        let flushes = Arc::new(Flushes::default());
        let syncs = Arc::new(AtomicUsize::new(0));
        let (entered, first_running) = mpsc::channel();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let drive = Path::new("/dev/drive-a");
        let sync = {
            let (syncs, gate) = (syncs.clone(), gate.clone());
            move || {
                syncs.fetch_add(1, Ordering::SeqCst);
                let _ = entered.send(());
                lock(&gate).recv().map_err(std::io::Error::other)
            }
        };
        std::thread::scope(|scope| {
            let first = scope.spawn(|| flushes.flush_with(drive, &sync));
            first_running.recv().unwrap();
            // Eight more erasers finish zeroing while the first flush runs:
            // that flush may have started before their writes, so they wait
            // for the next one, and share it.
            let waiting: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| flushes.flush_with(drive, &sync)))
                .collect();
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(
                syncs.load(Ordering::SeqCst),
                1,
                "nobody rides the running flush"
            );
            release.send(()).unwrap();
            first.join().unwrap().unwrap();
            first_running.recv().unwrap();
            release.send(()).unwrap();
            for caller in waiting {
                caller.join().unwrap().unwrap();
            }
        });
        assert_eq!(syncs.load(Ordering::SeqCst), 2, "nine erasers, two flushes");
    }

    #[test]
    fn a_failed_flush_fails_every_caller_it_covers_and_the_next_may_succeed() {
        let flushes = Flushes::default();
        let drive = Path::new("/dev/drive-b");
        let err = flushes
            .flush_with(drive, || Err(std::io::Error::other("I/O error")))
            .unwrap_err();
        assert!(err.to_string().contains("I/O error"), "{err}");
        flushes.flush_with(drive, || Ok(())).unwrap();
        // Another drive's flushes are its own.
        flushes
            .flush_with(Path::new("/dev/drive-c"), || Ok(()))
            .unwrap();
    }
}
