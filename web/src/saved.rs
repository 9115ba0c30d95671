//! The interrupted run kept in browser storage, saved so that a reload at any moment leaves a
//! checkpoint and a state (step, history) that belong together.
//!
//! A checkpoint is written to a new file named by its step; only then is `state.json`, which
//! names that file, replaced (one write, which the browser makes atomic); only then are older
//! checkpoints removed. A reload before the state is replaced leaves the previous state and
//! the previous checkpoint, both intact; a reload after it leaves the new pair and, at worst,
//! an old file that the next save removes.

use crate::protocol::{RunSpec, SavedRun};

/// The run's folder in storage.
pub const DIR: &str = "run";
/// The run's description, with its data, written once when it starts.
pub const SPEC: &str = "run/spec.json";
/// Step, history and the checkpoint's name, replaced at every save.
pub const STATE: &str = "run/state.json";
/// The one checkpoint file of states saved before checkpoints were named by step.
const LEGACY_CHECKPOINT: &str = "checkpoint.safetensors";

/// The storage the run is saved in: the browser's (OPFS), or memory in tests.
#[allow(async_fn_in_trait)] // used with concrete types only, on one thread
pub trait Store {
    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, String>;
    /// Replaces the file's contents as one step: a reader sees the old or the new bytes.
    async fn write(&self, path: &str, bytes: &[u8]) -> Result<(), String>;
    async fn remove(&self, path: &str) -> Result<(), String>;
    async fn list(&self, dir: &str) -> Result<Vec<String>, String>;
}

/// The checkpoint file for `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("checkpoint-{step}.safetensors")
}

fn is_checkpoint(name: &str) -> bool {
    name.starts_with("checkpoint") && name.ends_with(".safetensors")
}

/// Saves the run's state, with a new checkpoint when `checkpoint` is given (a finished run
/// saves its state only and keeps naming its last checkpoint).
pub async fn save<S: Store>(
    store: &S,
    mut state: SavedRun,
    checkpoint: Option<&[u8]>,
) -> Result<(), String> {
    let keep = match checkpoint {
        Some(bytes) => {
            let name = checkpoint_name(state.step);
            store.write(&format!("{DIR}/{name}"), bytes).await?;
            Some(name)
        }
        None => read_state(store).await?.and_then(|s| s.checkpoint),
    };
    state.checkpoint = keep.clone();
    let json = serde_json::to_string(&state).map_err(|e| e.to_string())?;
    store.write(STATE, json.as_bytes()).await?;
    for name in store.list(DIR).await? {
        if is_checkpoint(&name) && Some(&name) != keep.as_ref() {
            store.remove(&format!("{DIR}/{name}")).await?;
        }
    }
    Ok(())
}

async fn read_state<S: Store>(store: &S) -> Result<Option<SavedRun>, String> {
    let Some(bytes) = store.read(STATE).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&bytes).ok())
}

/// The saved run (its spec restored from `spec.json`), if there is one.
pub async fn load<S: Store>(store: &S) -> Option<SavedRun> {
    let spec: RunSpec = serde_json::from_slice(&store.read(SPEC).await.ok()??).ok()?;
    let mut saved = read_state(store).await.ok()??;
    saved.spec = spec;
    Some(saved)
}

/// The checkpoint the saved state belongs to.
pub async fn checkpoint<S: Store>(store: &S, saved: &SavedRun) -> Result<Option<Vec<u8>>, String> {
    let name = saved.checkpoint.as_deref().unwrap_or(LEGACY_CHECKPOINT);
    store.read(&format!("{DIR}/{name}")).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::protocol::{DataFile, History, ModelSource, StepPoint};
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;
    use tunelab_core::trainer::StepReport;

    /// Memory storage that stops working (as a reload stops the worker) after `budget` writes
    /// or removals.
    #[derive(Default)]
    struct Memory {
        files: RefCell<BTreeMap<String, Vec<u8>>>,
        budget: Cell<usize>,
    }

    impl Memory {
        fn spend(&self) -> Result<(), String> {
            let left = self.budget.get();
            if left == 0 {
                return Err("the page was reloaded".into());
            }
            self.budget.set(left - 1);
            Ok(())
        }
    }

    impl Store for Memory {
        async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.files.borrow().get(path).cloned())
        }
        async fn write(&self, path: &str, bytes: &[u8]) -> Result<(), String> {
            self.spend()?;
            self.files.borrow_mut().insert(path.into(), bytes.to_vec());
            Ok(())
        }
        async fn remove(&self, path: &str) -> Result<(), String> {
            self.spend()?;
            self.files.borrow_mut().remove(path);
            Ok(())
        }
        async fn list(&self, dir: &str) -> Result<Vec<String>, String> {
            let prefix = format!("{dir}/");
            Ok(self
                .files
                .borrow()
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
                .collect())
        }
    }

    /// Runs a future whose awaits all complete at once (as [`Memory`]'s do).
    fn now<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the memory store never waits"),
        }
    }

    fn spec() -> RunSpec {
        RunSpec {
            model: ModelSource::Builtin {
                id: "m".into(),
                dir: "models/m".into(),
            },
            kind: tunelab_core::trainer::TaskKind::Classification,
            dataset: "d".into(),
            train: DataFile {
                name: "d.csv".into(),
                text: "text,label\na,b\n".into(),
            },
            validation: None,
            labels: None,
            holdout: 0.1,
            config: tunelab_core::trainer::TrainConfig::default(),
            force_cpu: true,
            force_gpu: false,
        }
    }

    fn state(step: u64, finished: bool) -> SavedRun {
        let steps = (1..=step)
            .map(|s| StepPoint {
                report: StepReport {
                    step: s,
                    epoch: 0.0,
                    loss: 1.0,
                    grad_norm: 1.0,
                    lr: 1e-3,
                    tokens: 8,
                    examples: 2,
                    epoch_end: false,
                },
                ms: 1.0,
            })
            .collect();
        SavedRun {
            spec: spec(),
            step,
            total: 9,
            finished,
            history: History {
                steps,
                evals: Vec::new(),
            },
            checkpoint: None,
        }
    }

    /// A run that saves at steps 3, 6 and 9 (the last save is the finished state).
    fn run(store: &Memory) -> Result<(), String> {
        now(store.write(SPEC, serde_json::to_string(&spec()).unwrap().as_bytes()))?;
        for step in [3, 6] {
            let bytes = format!("weights at step {step}").into_bytes();
            now(save(store, state(step, false), Some(&bytes)))?;
        }
        now(save(store, state(9, true), None))
    }

    #[test]
    fn a_reload_at_any_moment_leaves_a_state_and_checkpoint_that_agree() {
        let mut interrupted = 0;
        for budget in 0..20 {
            let store = Memory::default();
            store.budget.set(budget);
            let finished = run(&store).is_ok();
            let Some(saved) = now(load(&store)) else {
                // Nothing saved yet: only before the first state was written.
                assert!(now(store.read(STATE)).unwrap().is_none());
                continue;
            };
            interrupted += usize::from(!finished);
            let ckpt = now(checkpoint(&store, &saved)).unwrap().unwrap_or_else(|| {
                panic!(
                    "budget {budget}: state at step {} has no checkpoint",
                    saved.step
                )
            });
            let ckpt_step = if saved.finished { 6 } else { saved.step };
            assert_eq!(
                String::from_utf8(ckpt).unwrap(),
                format!("weights at step {ckpt_step}"),
                "budget {budget}: the state and the checkpoint disagree"
            );
            assert_eq!(saved.history.steps.len() as u64, saved.step);
            // At most one checkpoint beyond the one in use is left over, and only until the
            // next save.
            let files = now(store.list(DIR)).unwrap();
            let checkpoints = files.iter().filter(|f| is_checkpoint(f)).count();
            assert!(checkpoints <= 2, "budget {budget}: {files:?}");
            if finished {
                assert_eq!(checkpoints, 1, "{files:?}");
            }
        }
        assert!(interrupted >= 4, "the reloads did not hit the saves");
    }

    #[test]
    fn a_state_saved_before_named_checkpoints_reads_the_old_file() {
        let store = Memory::default();
        store.budget.set(10);
        now(store.write(SPEC, serde_json::to_string(&spec()).unwrap().as_bytes())).unwrap();
        let mut old = serde_json::to_value(state(3, false)).unwrap();
        old.as_object_mut().unwrap().remove("checkpoint");
        now(store.write(STATE, old.to_string().as_bytes())).unwrap();
        now(store.write("run/checkpoint.safetensors", b"old")).unwrap();
        let saved = now(load(&store)).unwrap();
        assert_eq!(saved.checkpoint, None);
        assert_eq!(now(checkpoint(&store, &saved)).unwrap().unwrap(), b"old");
        // The next save replaces it with a named one and removes the old file.
        now(save(&store, state(6, false), Some(b"new"))).unwrap();
        assert_eq!(
            now(store.list(DIR)).unwrap(),
            vec!["checkpoint-6.safetensors", "spec.json", "state.json"]
        );
    }
}
