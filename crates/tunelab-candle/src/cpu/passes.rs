//! Runs a step's micro-batches at once, one per core, instead of one after another with every
//! op split across the cores.
//!
//! Split across cores, each of a step's hundreds of ops ends in a wait for the slowest
//! core's share, and its products are cut into pieces that each core packs its own operands
//! for. A batch of several sequences can instead be cut into parts (the trainer does it,
//! [`MicroBatch::split`](tunelab_core::data::MicroBatch::split)), whose forward and
//! backward passes are independent: each runs on its own pool with its share of the threads
//! (one each when there are as many parts as threads, so a part's ops run whole on one core),
//! and the parts' gradients add up to the batch's (gradient accumulation). On the MiniLM
//! shape (batch 8 × 128 tokens, 2 vCPUs), two passes of four sequences took 0.87–1.01 of the
//! time of one pass of eight on both cores, step by step in one process (`tunelab bench
//! --cpu-passes-ab`; see `docs/ARCHITECTURE.md`).
//!
//! Results differ from one pass over the whole batch only by the order in which the
//! gradients' terms are added (rounding), and do not depend on the thread count beyond the
//! number of parts; with LoRA dropout each part draws its own masks (from the trainer's
//! checkpointed stream), so a run resumed with another thread count draws other masks.
//! [`set_enabled`] turns it off for the process (the CLI reads `TUNELAB_CPU_PASSES`).

use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Whether [`passes`] reports more than one pass (see [`set_enabled`]).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns concurrent passes on (the default) or off for the whole process: off, a step runs
/// one pass over the whole batch with its ops split across the pool's threads.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether concurrent passes are on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How many passes to run at once from the calling thread: one per thread of its rayon pool
/// (the global pool outside any), or 1 when turned off. (The trainer makes no more parts
/// than the batch has rows; with fewer passes than threads each pass gets a share of them.)
pub fn passes() -> usize {
    if enabled() {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// The pools of each split of a thread count into concurrent passes, built once each:
/// `(passes, threads)` to one pool per pass.
type Pools = Vec<((usize, usize), Vec<Arc<ThreadPool>>)>;
static POOLS: Mutex<Pools> = Mutex::new(Vec::new());

/// `threads` split as evenly as possible over `n` passes (the first ones one more).
fn shares(n: usize, threads: usize) -> Vec<usize> {
    (0..n)
        .map(|i| (threads / n + usize::from(i < threads % n)).max(1))
        .collect()
}

/// One pool per pass for `n` passes sharing `threads` threads, or `None` when the threads
/// cannot be started.
fn pools(n: usize, threads: usize) -> Option<Vec<Arc<ThreadPool>>> {
    let mut all = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = all.iter().find(|(key, _)| *key == (n, threads)) {
        return Some(p.clone());
    }
    let built = shares(n, threads)
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            ThreadPoolBuilder::new()
                .num_threads(t)
                .thread_name(move |j| format!("tunelab-pass-{i}.{j}"))
                .build()
                .ok()
                .map(Arc::new)
        })
        .collect::<Option<Vec<_>>>()?;
    all.push(((n, threads), built.clone()));
    Some(built)
}

/// Runs `f(0)`, ..., `f(n - 1)` at once, each on its own pool with its share of the calling
/// thread's pool's threads (one each where there are as many passes as threads: rayon's
/// thread count inside is then 1, and each pass's ops run on one core), and returns the
/// results in order. Runs them one after another on the calling thread where `n < 2` or the
/// pools' threads cannot be started. A panic in one is raised again here once all have
/// finished.
pub fn run<R: Send>(n: usize, f: &(dyn Fn(usize) -> R + Sync)) -> Vec<R> {
    let pools = if n > 1 {
        pools(n, rayon::current_num_threads())
    } else {
        None
    };
    let Some(pools) = pools else {
        return (0..n).map(f).collect();
    };
    std::thread::scope(|s| {
        let others: Vec<_> = pools[1..]
            .iter()
            .enumerate()
            .map(|(i, pool)| s.spawn(move || pool.install(|| f(i + 1))))
            .collect();
        let mut out = Vec::with_capacity(n);
        out.push(pools[0].install(|| f(0)));
        for h in others {
            match h.join() {
                Ok(r) => out.push(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    /// Each pass runs on a pool of one thread, the passes on different threads, at the same
    /// time (each waits until all have started), and the results come back in order.
    #[test]
    fn passes_run_at_once_on_one_thread_pools() {
        let n = 3;
        let started = std::sync::atomic::AtomicUsize::new(0);
        let threads = StdMutex::new(HashSet::new());
        let pool = ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        let out = pool.install(|| {
            run(n, &|i| {
                threads.lock().unwrap().insert(std::thread::current().id());
                started.fetch_add(1, Ordering::SeqCst);
                let t0 = std::time::Instant::now();
                while started.load(Ordering::SeqCst) < n {
                    assert!(t0.elapsed() < Duration::from_secs(20), "pass {i} ran alone");
                    std::thread::yield_now();
                }
                (i * 10, rayon::current_num_threads())
            })
        });
        assert_eq!(out, vec![(0, 1), (10, 1), (20, 1)]);
        assert_eq!(threads.lock().unwrap().len(), n);
    }

    /// Fewer passes than threads share them out: 5 threads over 2 passes are 3 and 2.
    #[test]
    fn passes_share_the_threads() {
        assert_eq!(shares(2, 5), vec![3, 2]);
        assert_eq!(shares(4, 2), vec![1, 1, 1, 1]);
        let pool = ThreadPoolBuilder::new().num_threads(5).build().unwrap();
        let out = pool.install(|| run(2, &|_| rayon::current_num_threads()));
        assert_eq!(out, vec![3, 2]);
    }

    /// One pass runs on the calling thread.
    #[test]
    fn one_pass_runs_in_place() {
        let here = std::thread::current().id();
        let out = run(1, &|i| (i, std::thread::current().id() == here));
        assert_eq!(out, vec![(0, true)]);
    }
}
