//! The session runtimes: one single-threaded tokio runtime per core (its own thread, its own
//! IO driver and timers), each client session pinned to one of them for its whole life. The
//! accept loop, the control API and the console stay on the process's main runtime.
//!
//! Why (issue 19): on tokio's multi-threaded runtime a statement woke several threads — the
//! worker that read the client's message, another that stole the task, the one the server's
//! answer arrived on — and on a machine whose cores are busy with PostgreSQL each of those
//! wake-ups is a trip through the kernel's scheduler. A session on a runtime of its own core's
//! does all its work on one thread: it sleeps in one `epoll_wait` and wakes once per event.
//! No work stealing: a busy runtime keeps its sessions (new ones go to the least-loaded).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

/// The session runtimes. Dropping it stops them (their sessions' tasks are dropped).
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Sessions running on it now.
    sessions: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A session counted on its runtime until dropped (with the session's task).
pub struct Pinned(Arc<AtomicUsize>);

impl Drop for Pinned {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` session runtimes (at least one), each on a thread named `gate-sessions-<i>`.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut workers = Workers { workers: Vec::new() };
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = rt.handle().clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("gate-sessions-{i}")).spawn(move || {
                // Runs the runtime's tasks until told to stop; the runtime (and whatever task is
                // still on it) is dropped on this thread, outside any async context.
                rt.block_on(async move {
                    let _ = rx.await;
                });
            })?;
            workers.workers.push(Worker {
                handle,
                sessions: Arc::new(AtomicUsize::new(0)),
                stop: Some(tx),
                thread: Some(thread),
            });
        }
        Ok(workers)
    }

    /// How many runtimes there are.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Never: [`Workers::start`] starts at least one.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The runtime with the fewest sessions, and the session's count on it.
    pub fn pick(&self) -> (Handle, Pinned) {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.sessions.load(Ordering::Relaxed))
            .expect("at least one session runtime");
        w.sessions.fetch_add(1, Ordering::Relaxed);
        (w.handle.clone(), Pinned(w.sessions.clone()))
    }

    /// Sessions on each runtime now.
    pub fn loads(&self) -> Vec<usize> {
        self.workers.iter().map(|w| w.sessions.load(Ordering::Relaxed)).collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.workers {
            drop(w.stop.take());
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions go to the least-loaded runtime, each runtime runs its tasks on one thread of
    /// its own, and a session's end frees its place.
    #[test]
    fn sessions_go_to_the_least_loaded_runtime_and_stay_on_its_thread() {
        let workers = Workers::start(2).unwrap();
        let (h1, p1) = workers.pick();
        let (h2, p2) = workers.pick();
        assert_eq!(workers.loads(), vec![1, 1]);
        let name = |h: &Handle| {
            let (tx, rx) = std::sync::mpsc::channel();
            h.spawn(async move {
                let first = std::thread::current().name().map(str::to_string);
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let _ = tx.send((first, std::thread::current().name().map(str::to_string)));
            });
            rx.recv().unwrap()
        };
        let (a0, a1) = name(&h1);
        let (b0, b1) = name(&h2);
        assert_eq!(a0, a1, "a task stays on its runtime's thread");
        assert_eq!(b0, b1);
        assert_ne!(a0, b0, "two runtimes, two threads");
        assert!(a0.unwrap().starts_with("gate-sessions-"));
        drop(p1);
        assert_eq!(workers.loads(), vec![0, 1]);
        let (_, p3) = workers.pick();
        assert_eq!(workers.loads(), vec![1, 1], "the freed runtime is picked");
        drop((p2, p3));
    }
}
