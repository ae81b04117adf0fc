//! Requests served off the event loop: a few threads per drive take them in the
//! order the driver queued them, so that a slow read stalls neither the pod's
//! network and vsock nor the drive's other requests. A barrier (a flush) starts
//! only once every request queued before it has finished, and none queued after it
//! starts before it: a flush covers the writes the driver saw complete.
//!
//! The threads start with the first request, from the event loop's thread, so they
//! run under its seccomp filter. Finished requests are collected by the event loop
//! (`take_done`), woken by `done_event`, which alone touches the queue.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use vmm_sys_util::eventfd::EventFd;

/// What runs one request on a worker thread: the request and the thread's scratch
/// buffer in, the bytes written into the request's buffers out.
pub type Run<W> = dyn Fn(W, &mut Vec<u8>) -> u32 + Send + Sync;

struct Job<W> {
    head: u16,
    barrier: bool,
    work: W,
}

struct State<W> {
    queue: VecDeque<Job<W>>,
    /// Taken by a thread, not finished.
    running: usize,
    /// Finished, not collected: (head, bytes written).
    done: Vec<(u16, u32)>,
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
    done: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl<W: Send + 'static> Pool<W> {
    /// A pool of `size` threads named `name` (started with the first request) that
    /// run each request with `run`.
    pub fn new(name: String, size: usize, run: Arc<Run<W>>) -> std::io::Result<Self> {
        Ok(Pool {
            name,
            size: size.max(1),
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    running: 0,
                    done: Vec::new(),
                    stop: false,
                }),
                changed: Condvar::new(),
            }),
            run,
            done: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            threads: Vec::new(),
        })
    }

    /// Signalled when requests finish.
    pub fn done_event(&self) -> &EventFd {
        &self.done
    }

    /// Queues request `work` (descriptor chain `head`); a `barrier` waits for every
    /// request before it. Without a thread to run it (none could be started) the
    /// request is handed back.
    pub fn submit(&mut self, head: u16, barrier: bool, work: W) -> Result<(), W> {
        if self.threads.len() < self.size && self.start_threads().is_err() {
            return Err(work);
        }
        let mut st = self.shared.lock();
        st.queue.push_back(Job {
            head,
            barrier,
            work,
        });
        drop(st);
        self.shared.changed.notify_one();
        Ok(())
    }

    /// Requests submitted and not yet collected.
    pub fn pending(&self) -> usize {
        let st = self.shared.lock();
        st.queue.len() + st.running + st.done.len()
    }

    /// The requests finished since the last call.
    pub fn take_done(&self) -> Vec<(u16, u32)> {
        let _ = self.done.read();
        std::mem::take(&mut self.shared.lock().done)
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
            let done = self.done.clone();
            let t = std::thread::Builder::new()
                .name(self.name.clone())
                .spawn(move || work(&shared, &*run, &done));
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
/// nothing runs), runs it, reports it.
fn work<W>(shared: &Shared<W>, run: &Run<W>, done: &EventFd) {
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
        let written = run(job.work, &mut scratch);
        st = shared.lock();
        st.running -= 1;
        st.done.push((job.head, written));
        // Another thread may wait for this one (a barrier, `wait_idle`).
        shared.changed.notify_all();
        if let Err(e) = done.write(1) {
            tracing::error!("signalling a finished virtio-blk request: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

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
            0
        });
        let mut pool = Pool::new("test".into(), threads, run).unwrap();
        for (i, &(name, ms, barrier)) in steps.iter().enumerate() {
            pool.submit(i as u16, barrier, (name, ms)).unwrap();
        }
        pool.wait_idle();
        let done = pool.take_done();
        assert_eq!(done.len(), steps.len());
        assert_eq!(pool.pending(), 0);
        drop(pool);
        let got = log.lock().unwrap().clone();
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
        let s = started.clone();
        let run: Arc<Run<()>> = Arc::new(move |(), _| {
            let (count, cv) = &*s;
            let mut n = count.lock().unwrap();
            *n += 1;
            cv.notify_all();
            let (n, _) = cv
                .wait_timeout_while(n, Duration::from_secs(10), |n| *n < 2)
                .unwrap();
            u32::from(*n >= 2)
        });
        let mut pool = Pool::new("test".into(), 2, run).unwrap();
        pool.submit(0, false, ()).unwrap();
        pool.submit(1, false, ()).unwrap();
        pool.wait_idle();
        let mut done = pool.take_done();
        done.sort();
        assert_eq!(done, vec![(0, 1), (1, 1)], "one waited for the other");
    }

    #[test]
    fn the_event_fires_and_the_finished_are_collected_once() {
        let run: Arc<Run<u32>> = Arc::new(|n, scratch| {
            scratch.resize(16, 0);
            n
        });
        let mut pool = Pool::new("test".into(), 1, run).unwrap();
        pool.submit(7, false, 70).unwrap();
        pool.submit(8, false, 80).unwrap();
        pool.wait_idle();
        assert!(pool.done_event().read().unwrap() >= 1);
        assert_eq!(pool.take_done(), vec![(7, 70), (8, 80)]);
        assert!(pool.take_done().is_empty());
    }
}
