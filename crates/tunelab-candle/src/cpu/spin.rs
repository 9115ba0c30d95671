//! Keeps the pool's other threads looking for work between the CPU ops of a step, instead of
//! sleeping until each op wakes them.
//!
//! A training step on the CPU is hundreds of ops, most of them parallel (a product several
//! times over), run from one pool thread; the pool's other threads steal their share of each. Left to rayon,
//! a thread that finds no work spins a few microseconds, then sleeps, and the next op wakes it
//! through the kernel. In a virtual machine that wake-up takes tens of microseconds, during
//! which the op's work sits with one thread: on the MiniLM LoRA step on 2 vCPUs the second
//! thread was switched out ~1,100 times a step and was off the CPU ~20% of the time (busy
//! 79%, counting rayon's own spinning; with this, 99.8%). OpenMP runtimes
//! (behind PyTorch's CPU ops) avoid this by spinning for a while after each parallel region
//! before they sleep; this does the same on rayon's pool.
//!
//! [`keep_awake`], called as an op starts, hands each other thread of the calling thread's
//! pool a job that runs the pool's pending work ([`rayon::yield_now`]) as soon as it appears,
//! and returns once it has found none for [`IDLE`]. While these jobs run, the next call does
//! nothing but one atomic load. Only pool threads arm them (a call from outside any pool
//! does nothing), and only natively (the module is not built for wasm: the browser's threaded
//! build leaves its Web Workers as rayon runs them). Nothing here changes what any op
//! computes.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a thread keeps looking for work after it last found some. Longer than the gaps
/// between one step's ops (microseconds: the tape's bookkeeping between kernels) and short
/// against the pauses between steps that are not compute (loading and batching data,
/// checkpoints), after which the threads sleep again.
pub const IDLE: Duration = Duration::from_millis(5);

/// Whether [`keep_awake`] arms spinners (see [`set_enabled`]).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the spinning on (the default) or off for the whole process, like OpenMP's
/// `OMP_WAIT_POLICY=active`/`passive` (the CLI reads `TUNELAB_CPU_WAIT`): off, idle threads
/// sleep as soon as rayon lets them, and running spinners return at their next idle poll.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether spinning is on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The spinners one thread armed.
#[derive(Default)]
struct Armed {
    /// Those not yet returned.
    running: AtomicUsize,
    /// Those that started spinning (rather than returned at once), all told.
    spun: AtomicUsize,
}

thread_local! {
    /// The spinners this thread armed (each thread that arms has its own).
    static ARMED: Arc<Armed> = Arc::new(Armed::default());
    /// Whether this thread is running a spinner: one armed by another thread, picked up while
    /// spinning, returns at once instead of spinning inside it.
    static SPINNING: Cell<bool> = const { Cell::new(false) };
}

/// Arms the spinners of the calling pool thread's pool (see the module's documentation),
/// unless those it armed last are still running. Does nothing outside a pool, in a pool of
/// one thread, on a thread that is itself spinning, or with spinning turned off.
pub fn keep_awake() {
    // A thread running a spinner arms none: it is not the one the op's work comes from, and
    // the thread that is would otherwise take a spinner while it waits for a stolen job.
    if !enabled() || SPINNING.with(Cell::get) {
        return;
    }
    let (Some(me), threads) = (rayon::current_thread_index(), rayon::current_num_threads()) else {
        return;
    };
    if threads < 2 {
        return;
    }
    // While this thread's spinners run, the check ends here with one load (no reference
    // count taken, no locked compare-exchange).
    let Some(armed) = ARMED.with(|a| {
        let free = a.running.load(Ordering::Acquire) == 0
            && a.running
                .compare_exchange(0, threads - 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        free.then(|| Arc::clone(a))
    }) else {
        return;
    };
    // Every thread of the pool runs this once; the calling thread's copy returns at once and
    // is not counted.
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() != me {
            spin(&armed.spun);
            armed.running.fetch_sub(1, Ordering::AcqRel);
        }
    });
}

/// Runs the pool's pending work until there has been none for [`IDLE`] or spinning is turned
/// off, counting itself in `spun` as it starts; returns at once where this thread is already
/// doing so.
fn spin(spun: &AtomicUsize) {
    if SPINNING.with(|s| s.replace(true)) {
        return;
    }
    spun.fetch_add(1, Ordering::AcqRel);
    let mut last_work = Instant::now();
    let mut idle_polls = 0u32;
    loop {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => {
                last_work = Instant::now();
                idle_polls = 0;
            }
            Some(rayon::Yield::Idle) => {
                idle_polls += 1;
                // The clock is read every 64 polls.
                if idle_polls.is_multiple_of(64) && (last_work.elapsed() >= IDLE || !enabled()) {
                    break;
                }
                std::hint::spin_loop();
            }
            None => break,
        }
    }
    SPINNING.with(|s| s.set(false));
}

/// The calling thread's spinners: how many are still running, and how many started spinning.
pub fn armed() -> (usize, usize) {
    ARMED.with(|a| {
        (
            a.running.load(Ordering::Acquire),
            a.spun.load(Ordering::Acquire),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits up to ten seconds (the tests share two cores) for `done(armed())`.
    fn wait_until(done: impl Fn((usize, usize)) -> bool) -> (usize, usize) {
        let start = Instant::now();
        while !done(armed()) && start.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
        armed()
    }

    #[test]
    fn other_threads_spin_for_work_and_then_stop() {
        crate::on_pool(3, || {
            assert_eq!(armed(), (0, 0));
            keep_awake();
            // The two other threads of the pool pick up a spinner each.
            assert_eq!(wait_until(|(_, spun)| spun == 2).1, 2);
            // Work arriving while they spin is done, its results in order.
            let squares: Vec<u64> = {
                use rayon::prelude::*;
                (0..10_000u64).into_par_iter().map(|i| i * i).collect()
            };
            assert!(
                squares
                    .iter()
                    .enumerate()
                    .all(|(i, &s)| s == (i * i) as u64)
            );
            // A spinning thread that calls it (running a job it picked up) arms nothing. Its
            // spinner may have stopped before the job came (the test thread preempted for
            // IDLE), so this is tried until one was spinning.
            let me = rayon::current_thread_index();
            let mut seen_spinning = 0;
            for _ in 0..100 {
                keep_awake();
                let from_spinners = rayon::broadcast(|ctx| {
                    let spinning = SPINNING.with(Cell::get);
                    (Some(ctx.index()) != me && spinning).then(|| {
                        keep_awake();
                        armed()
                    })
                });
                for armed_there in from_spinners.into_iter().flatten() {
                    assert_eq!(armed_there, (0, 0));
                    seen_spinning += 1;
                }
                if seen_spinning > 0 {
                    break;
                }
            }
            assert!(seen_spinning > 0, "no spinner ran the broadcast");
            // With no work for IDLE they return, and the next call arms them again.
            let (running, spun) = wait_until(|(running, _)| running == 0);
            assert_eq!(running, 0, "the spinners did not stop");
            keep_awake();
            assert_eq!(wait_until(|(running, _)| running == 0), (0, spun + 2));
            // Turned off, it arms nothing (the switch is the process's: no other test of
            // this crate looks at the spinners).
            set_enabled(false);
            keep_awake();
            let off = armed();
            set_enabled(true);
            assert_eq!(off, (0, spun + 2));
        })
        .unwrap();
    }

    #[test]
    fn nothing_is_armed_outside_a_pool_or_on_one_thread() {
        // The test thread is not a pool thread.
        keep_awake();
        assert_eq!(armed(), (0, 0));
        crate::on_pool(1, || {
            keep_awake();
            assert_eq!(armed(), (0, 0));
        })
        .unwrap();
    }
}
