//! Requests served off the event loop: a few threads per drive take them in the
//! order the driver queued them, so that a slow read stalls neither the pod's
//! network and vsock nor the drive's other requests. A barrier (a flush) starts
//! only once every request queued before it has finished, and none queued after it
//! starts before it: a flush covers the writes the driver saw complete.
//!
//! The threads start with the first request, from the event loop's thread, so they
//! run under its seccomp filter. Each request returns itself to the driver when it
//! finishes (a hop through the event loop cost a quarter of the random 4 KiB IOPS in
//! the emulated machine); the event loop is woken (`freed_event`) only when it
//! stopped taking requests because the pool was full.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use vmm_sys_util::eventfd::EventFd;

/// What runs one request on a worker thread (and returns it to the driver), with
/// the thread's scratch buffer.
pub type Run<W> = dyn Fn(W, &mut Vec<u8>) + Send + Sync;

struct Job<W> {
    barrier: bool,
    work: W,
}

struct State<W> {
    queue: VecDeque<Job<W>>,
    /// Taken by a thread, not finished.
    running: usize,
    /// Whether the next finished request signals `freed`.
    wake: bool,
    stop: bool,
}

struct Shared<W> {
    state: Mutex<State<W>>,
    /// Signalled when a job is queued or finishes, and on stop.
    changed: Condvar,
}

impl<W> Shared<W> {
    fn lock(&self) -> MutexGuard<'_, State<W>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The worker threads of one drive.
pub struct Pool<W: Send + 'static> {
    name: String,
    size: usize,
    shared: Arc<Shared<W>>,
    run: Arc<Run<W>>,
    /// Shared, not duplicated: the seccomp filter the threads start under allows no
    /// `fcntl(F_DUPFD)`.
    freed: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl<W: Send + 'static> Pool<W> {
    /// A pool of `size` threads named `name` (started with the first request) that
    /// run each request with `run`, and signal `freed` as asked
    /// ([`Pool::wake_on_next`]).
    pub fn new(name: String, size: usize, run: Arc<Run<W>>, freed: Arc<EventFd>) -> Self {
        Pool {
            name,
            size: size.max(1),
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    running: 0,
                    wake: false,
                    stop: false,
                }),
                changed: Condvar::new(),
            }),
            run,
            freed,
            threads: Vec::new(),
        }
    }

    /// Signalled when a request finishes after [`Pool::wake_on_next`].
    #[cfg(test)]
    pub fn freed_event(&self) -> &EventFd {
        &self.freed
    }

    /// Asks for `freed_event` when the next request finishes (or at once if none is
    /// pending any more).
    pub fn wake_on_next(&self) {
        let mut st = self.shared.lock();
        if st.queue.is_empty() && st.running == 0 {
            drop(st);
            self.signal_freed();
        } else {
            st.wake = true;
        }
    }

    fn signal_freed(&self) {
        if let Err(e) = self.freed.write(1) {
            tracing::error!("{}: signalling a finished request: {e}", self.name);
        }
    }

    /// Queues request `work`; a `barrier` waits for every request before it. Without
    /// a thread to run it (none could be started) the request is handed back.
    pub fn submit(&mut self, barrier: bool, work: W) -> Result<(), W> {
        if self.threads.len() < self.size && self.start_threads().is_err() {
            return Err(work);
        }
        let mut st = self.shared.lock();
        st.queue.push_back(Job { barrier, work });
        drop(st);
        self.shared.changed.notify_one();
        Ok(())
    }

    /// Requests submitted and not finished.
    pub fn pending(&self) -> usize {
        let st = self.shared.lock();
        st.queue.len() + st.running
    }

    /// Waits until every submitted request has finished (a snapshot, a reset or a
    /// swap of the backing file must not race one).
    pub fn wait_idle(&self) {
        let mut st = self.shared.lock();
        while !st.queue.is_empty() || st.running > 0 {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn start_threads(&mut self) -> std::io::Result<()> {
        while self.threads.len() < self.size {
            let (shared, run) = (self.shared.clone(), self.run.clone());
            let freed = self.freed.clone();
            let t = std::thread::Builder::new()
                .name(self.name.clone())
                .spawn(move || work(&shared, &*run, &freed));
            match t {
                Ok(t) => self.threads.push(t),
                // The threads already running serve the drive.
                Err(e) if !self.threads.is_empty() => {
                    tracing::warn!("{}: a worker thread cannot start: {e}", self.name);
                    self.size = self.threads.len();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<W: Send + 'static> Drop for Pool<W> {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One worker thread: takes the job at the head of the queue (a barrier only once
/// nothing runs) and runs it.
fn work<W>(shared: &Shared<W>, run: &Run<W>, freed: &EventFd) {
    let mut scratch = Vec::new();
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let ready = st
            .queue
            .front()
            .is_some_and(|j| !j.barrier || st.running == 0);
        let job = if ready { st.queue.pop_front() } else { None };
        let Some(job) = job else {
            st = shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        st.running += 1;
        drop(st);
        run(job.work, &mut scratch);
        st = shared.lock();
        st.running -= 1;
        // Another thread may wait for this one (a barrier, `wait_idle`).
        shared.changed.notify_all();
        if std::mem::take(&mut st.wake) {
            if let Err(e) = freed.write(1) {
                tracing::error!("signalling a finished virtio-blk request: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn event() -> Arc<EventFd> {
        Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    /// A job: (name, how long it runs, whether it is a barrier).
    type Step = (&'static str, u64, bool);

    /// Runs `steps` on a pool of `threads`; returns when each started and ended.
    fn run_steps(threads: usize, steps: &[Step]) -> Vec<(&'static str, Instant, Instant)> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let run: Arc<Run<(&'static str, u64)>> = Arc::new(move |(name, ms), _| {
            let start = Instant::now();
            std::thread::sleep(Duration::from_millis(ms));
            l.lock().unwrap().push((name, start, Instant::now()));
        });
        let mut pool = Pool::new("test".into(), threads, run, event());
        for &(name, ms, barrier) in steps {
            pool.submit(barrier, (name, ms)).unwrap();
        }
        pool.wait_idle();
        assert_eq!(pool.pending(), 0);
        drop(pool);
        let got = log.lock().unwrap().clone();
        assert_eq!(got.len(), steps.len());
        got
    }

    fn at(log: &[(&'static str, Instant, Instant)], name: &str) -> (Instant, Instant) {
        let e = log.iter().find(|e| e.0 == name).unwrap();
        (e.1, e.2)
    }

    #[test]
    fn a_flush_after_writes_completes_after_them() {
        let log = run_steps(
            3,
            &[
                ("slow write", 200, false),
                ("quick write", 1, false),
                ("flush", 1, true),
                ("later write", 1, false),
            ],
        );
        let (flush_start, _) = at(&log, "flush");
        for w in ["slow write", "quick write"] {
            assert!(
                at(&log, w).1 <= flush_start,
                "{w} ended after the flush began"
            );
        }
    }

    #[test]
    fn requests_run_side_by_side() {
        // Each request waits (up to 10 s) until both have started.
        let started = Arc::new((Mutex::new(0), Condvar::new()));
        let met = Arc::new(Mutex::new(Vec::new()));
        let (s, m) = (started.clone(), met.clone());
        let run: Arc<Run<()>> = Arc::new(move |(), _| {
            let (count, cv) = &*s;
            let mut n = count.lock().unwrap();
            *n += 1;
            cv.notify_all();
            let (n, _) = cv
                .wait_timeout_while(n, Duration::from_secs(10), |n| *n < 2)
                .unwrap();
            m.lock().unwrap().push(*n >= 2);
        });
        let mut pool = Pool::new("test".into(), 2, run, event());
        pool.submit(false, ()).unwrap();
        pool.submit(false, ()).unwrap();
        pool.wait_idle();
        assert_eq!(
            *met.lock().unwrap(),
            [true, true],
            "one waited for the other"
        );
    }

    #[test]
    fn the_freed_event_fires_once_when_asked_for() {
        let gate = Arc::new(Mutex::new(()));
        let g = gate.clone();
        let run: Arc<Run<u32>> = Arc::new(move |_, scratch| {
            scratch.resize(16, 0);
            drop(g.lock().unwrap());
        });
        let mut pool = Pool::new("test".into(), 1, run, event());
        let held = gate.lock().unwrap();
        pool.submit(false, 1).unwrap();
        pool.submit(false, 2).unwrap();
        pool.wait_on_none_finished_yet(&held);
        pool.wake_on_next();
        drop(held);
        pool.wait_idle();
        assert_eq!(pool.freed_event().read().unwrap(), 1, "one signal, not two");
        // Nothing pending: asked for, it fires at once.
        pool.wake_on_next();
        assert_eq!(pool.freed_event().read().unwrap(), 1);
    }

    impl<W: Send + 'static> Pool<W> {
        /// (Tests) Checks that no request finished while `_held` blocks them.
        fn wait_on_none_finished_yet(&self, _held: &std::sync::MutexGuard<'_, ()>) {
            assert_eq!(self.pending(), 2);
            assert!(self.freed_event().read().is_err(), "nothing signalled yet");
        }
    }
}
