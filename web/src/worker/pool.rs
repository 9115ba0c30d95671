//! The threaded worker's thread pool: rayon's global pool, whose threads are Web Workers that
//! instantiate this worker's module on its shared memory. Compiled only into the threaded
//! build (`target_feature = "atomics"`, built by `cargo xtask`'s web build into
//! `dist/threads/`), which the page starts when it is cross-origin isolated.
//!
//! A pool thread is a Blob-URL worker running [`THREAD_JS`]: it loads the wasm-bindgen glue
//! (whose URL the loader left in `self.tunelabGlue`), instantiates the module on the memory
//! it was sent, says "ready" and enters [`tunelab_pool_thread`], which waits for a rayon
//! thread to run. Only when every thread is ready does [`start`] build rayon's pool, handing
//! each waiting thread its rayon thread through [`WAITING`]: building the pool blocks until
//! its threads run, and a worker that has not started yet cannot start while the worker that
//! created it is blocked.

use js_sys::{Array, Promise, Reflect};
use std::cell::RefCell;
use std::sync::{Condvar, Mutex};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, BlobPropertyBag, Url, Worker};

/// A pool thread's script (see the module's doc).
const THREAD_JS: &str = r#"
self.tunelabPoolThread = true;
self.onmessageerror = () => postMessage('cannot receive the module and its shared memory');
self.onmessage = (e) => {
  const [glue, module, memory] = e.data;
  try {
    importScripts(glue);
  } catch (err) {
    postMessage('cannot load ' + glue + ': ' + err);
    return;
  }
  wasm_bindgen({ module_or_path: module, memory }).then(
    () => {
      postMessage('ready');
      wasm_bindgen.tunelab_pool_thread();
      close();
    },
    (err) => postMessage('cannot instantiate the module: ' + err),
  );
};
"#;

/// Most threads a pool gets, whatever the browser reports.
const MAX_THREADS: usize = 16;

/// Rayon threads handed over to the pool threads waiting in [`tunelab_pool_thread`].
static WAITING: (Mutex<Vec<rayon::ThreadBuilder>>, Condvar) =
    (Mutex::new(Vec::new()), Condvar::new());

thread_local! {
    /// The pool's workers, kept for the page's lifetime.
    static WORKERS: RefCell<Vec<Worker>> = const { RefCell::new(Vec::new()) };
}

/// True in a pool thread (its script sets the flag before the module starts): `main` returns
/// at once there, so only the training worker answers the page.
pub fn is_pool_thread() -> bool {
    Reflect::get(&js_sys::global(), &"tunelabPoolThread".into()).is_ok_and(|v| v.is_truthy())
}

/// A pool thread's entry point: waits for a rayon thread and runs it until the pool ends.
#[wasm_bindgen]
pub fn tunelab_pool_thread() {
    let (lock, ready) = &WAITING;
    let thread = {
        let mut waiting = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(t) = waiting.pop() {
                break t;
            }
            waiting = ready
                .wait(waiting)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    };
    thread.run();
}

fn js_err(what: &str, e: JsValue) -> String {
    format!(
        "{what}: {}",
        e.as_string().unwrap_or_else(|| format!("{e:?}"))
    )
}

/// The browser's logical core count (at least 1, at most [`MAX_THREADS`]).
pub fn hardware_threads() -> usize {
    Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(|n| Reflect::get(&n, &"hardwareConcurrency".into()))
        .ok()
        .and_then(|v| v.as_f64())
        .map_or(1, |n| (n as usize).clamp(1, MAX_THREADS))
}

/// Starts `threads` Web Workers, waits until each is ready, then builds rayon's global pool
/// on them.
pub async fn start(threads: usize) -> Result<(), String> {
    let glue = Reflect::get(&js_sys::global(), &"tunelabGlue".into())
        .ok()
        .and_then(|v| v.as_string())
        .ok_or("the threaded worker's loader did not say where its glue script is")?;
    let opts = BlobPropertyBag::new();
    opts.set_type("text/javascript");
    let parts = Array::of1(&JsValue::from_str(THREAD_JS));
    let blob = Blob::new_with_str_sequence_and_options(&parts, &opts)
        .map_err(|e| js_err("cannot make the pool thread's script", e))?;
    let script = Url::create_object_url_with_blob(&blob)
        .map_err(|e| js_err("cannot make the pool thread's script", e))?;
    let ready = Array::new();
    for _ in 0..threads {
        let answer = spawn(&script, &glue)?;
        ready.push(&answer);
    }
    // Each answer is the thread's first message event, or the error event of its script.
    let field = |v: &JsValue, name: &str| {
        Reflect::get(v, &name.into())
            .ok()
            .and_then(|d| d.as_string())
    };
    let answers = JsFuture::from(Promise::all(&ready)).await.map_err(|e| {
        let why = field(&e, "message").unwrap_or_else(|| format!("{e:?}"));
        format!("a CPU backend thread failed to start: {why}")
    })?;
    for a in Array::from(&answers).iter() {
        let data = field(&a, "data");
        if data.as_deref() != Some("ready") {
            return Err(format!(
                "a CPU backend thread failed to start: {}",
                data.unwrap_or_else(|| format!("{a:?}"))
            ));
        }
    }
    // Every thread is in `tunelab_pool_thread`, waiting: building the pool hands each one its
    // rayon thread (and returns once all of them run).
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .spawn_handler(|thread| {
            let (lock, ready) = &WAITING;
            lock.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(thread);
            ready.notify_one();
            Ok(())
        })
        .build_global()
        .map_err(|e| format!("cannot start the CPU backend's threads: {e}"))
}

/// Starts one pool thread; returns a promise of its first message (or its error).
fn spawn(script: &str, glue: &str) -> Result<Promise, String> {
    let worker = Worker::new(script).map_err(|e| js_err("cannot start a Web Worker", e))?;
    let promise = Promise::new(&mut |resolve, reject| {
        worker.set_onmessage(Some(&resolve));
        worker.set_onerror(Some(&reject));
    });
    let msg = Array::of3(
        &JsValue::from_str(glue),
        &wasm_bindgen::module(),
        &wasm_bindgen::memory(),
    );
    if let Err(e) = worker.post_message(&msg) {
        worker.terminate();
        return Err(js_err("cannot start a Web Worker", e));
    }
    WORKERS.with(|w| w.borrow_mut().push(worker));
    Ok(promise)
}
