//! The page's side of the worker: starting it, sending requests, receiving events.
//!
//! Two builds of the worker exist. Where the page is cross-origin isolated (the app's server
//! sends COOP and COEP headers), it starts the threaded one (`dist/threads/`, built with
//! shared memory: the CPU backend's kernels run on a pool of Web Workers; and with relaxed
//! SIMD, so only where the browser validates a relaxed-SIMD module); elsewhere, or with
//! `?threads=1` in the URL, the plain single-threaded one Trunk builds. A threaded worker that
//! fails before it says "worker started" is replaced by the plain one, saying why.

use js_sys::{Array, Object, Reflect, Uint8Array};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use tunelab_web::protocol::{Event, Request};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, Worker};

/// Trunk writes the plain worker's loader next to index.html (see web/index.html).
const PLAIN: &str = "./tunelab-worker_loader.js";
/// `cargo xtask`'s web build writes the threaded worker here (see crates/xtask/src/serve.rs).
const THREADED: &str = "./threads/tunelab-worker_loader.js";

/// How long the threaded worker may take to say "worker started" (it compiles the module,
/// then starts one Web Worker per core) before the plain one replaces it.
const START_TIMEOUT_MS: i32 = 90_000;

type OnEvent = Rc<dyn Fn(Event, Option<Vec<u8>>)>;

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Whether to start the threaded worker: the page can share memory with workers
/// (`crossOriginIsolated`) and the URL does not ask for one thread (`?threads=1`).
fn wants_threads() -> bool {
    let g = js_sys::global();
    let isolated = Reflect::get(&g, &"crossOriginIsolated".into()).is_ok_and(|v| v.is_truthy());
    let one = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .and_then(|s| web_sys::UrlSearchParams::new_with_str(&s).ok())
        .and_then(|p| p.get("threads"))
        .is_some_and(|t| t == "1");
    isolated && !one
}

/// A module with one function, `(v128, v128, v128) -> v128`, that returns
/// `f32x4.relaxed_madd` of its arguments (opcode 0xfd 0x105): a browser that validates it can
/// load the threaded worker, which is built with relaxed SIMD.
const RELAXED_SIMD_PROBE: [u8; 37] = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x08, 0x01, 0x60, 0x03, 0x7b, 0x7b, 0x7b, 0x01, 0x7b, // type: (v128 ×3) -> v128
    0x03, 0x02, 0x01, 0x00, // function 0 has type 0
    0x0a, 0x0d, 0x01, 0x0b, 0x00, // code: one body of 11 bytes, no locals
    0x20, 0x00, 0x20, 0x01, 0x20, 0x02, // local.get 0, 1, 2
    0xfd, 0x85, 0x02, 0x0b, // f32x4.relaxed_madd, end
];

/// Whether this browser's WebAssembly has relaxed SIMD.
fn has_relaxed_simd() -> bool {
    let probe = Uint8Array::from(&RELAXED_SIMD_PROBE[..]);
    js_sys::WebAssembly::validate(&probe).unwrap_or(false)
}

/// Starts the worker; `on_event` gets every event with its payload (if any).
pub fn start(on_event: impl Fn(Event, Option<Vec<u8>>) + 'static) -> Result<(), String> {
    let on_event: OnEvent = Rc::new(on_event);
    if !wants_threads() {
        return spawn(PLAIN, on_event, false);
    }
    if !has_relaxed_simd() {
        on_event(
            Event::Status {
                message: "This browser's WebAssembly lacks relaxed SIMD, which the CPU \
                          backend's threaded build needs; using one thread."
                    .into(),
            },
            None,
        );
        return spawn(PLAIN, on_event, false);
    }
    spawn(THREADED, on_event, true)
}

/// Replaces a threaded worker that could not start with the plain one.
fn fall_back(on_event: &OnEvent, reason: &str) {
    WORKER.with(|w| {
        if let Some(w) = w.borrow_mut().take() {
            w.terminate();
        }
    });
    web_sys::console::warn_1(&format!("threaded worker: {reason}").into());
    on_event(
        Event::Status {
            message: format!(
                "The CPU backend's threads could not start ({reason}); using one thread."
            ),
        },
        None,
    );
    if let Err(e) = spawn(PLAIN, Rc::clone(on_event), false) {
        on_event(Event::Error { message: e }, None);
    }
}

fn spawn(url: &str, on_event: OnEvent, threaded: bool) -> Result<(), String> {
    let worker =
        Worker::new(url).map_err(|e| format!("cannot start the training worker: {e:?}"))?;
    // True while a threaded worker has not yet said "worker started".
    let starting = Rc::new(Cell::new(threaded));
    let (st, oe) = (Rc::clone(&starting), Rc::clone(&on_event));
    let handler = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let arr: Array = ev.data().dyn_into().unwrap_or_default();
        let Some(json) = arr.get(0).as_string() else {
            return;
        };
        let payload = arr.get(1).dyn_into::<Uint8Array>().ok().map(|a| a.to_vec());
        let event = serde_json::from_str::<Event>(&json).unwrap_or_else(|e| Event::Error {
            message: format!("unreadable message from the worker: {e}"),
        });
        if st.get() {
            match &event {
                Event::Status { message } if message == "worker started" => st.set(false),
                Event::Error { message } => {
                    st.set(false);
                    fall_back(&oe, message);
                    return;
                }
                _ => {}
            }
        }
        oe(event, payload);
    });
    worker.set_onmessage(Some(handler.as_ref().unchecked_ref()));
    handler.forget();
    let (st, oe) = (Rc::clone(&starting), Rc::clone(&on_event));
    let onerror = Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |e: web_sys::ErrorEvent| {
        web_sys::console::error_1(&format!("worker error: {}", e.message()).into());
        if st.get() {
            st.set(false);
            fall_back(&oe, &format!("its script failed: {}", e.message()));
        }
    });
    worker.set_onerror(Some(onerror.as_ref().unchecked_ref()));
    onerror.forget();
    if threaded {
        // A pool thread that never answers (no message, no error) must not leave the page
        // waiting for ever.
        let timeout = Closure::once_into_js(move || {
            if starting.get() {
                starting.set(false);
                fall_back(
                    &on_event,
                    &format!("no answer in {} s", START_TIMEOUT_MS / 1000),
                );
            }
        });
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(
                timeout.unchecked_ref(),
                START_TIMEOUT_MS,
            );
        }
    }
    WORKER.with(|w| *w.borrow_mut() = Some(worker));
    Ok(())
}

/// Sends a request with named binary payloads (their buffers are transferred).
pub fn send_with(req: &Request, files: Vec<(String, Vec<u8>)>) {
    let Ok(json) = serde_json::to_string(req) else {
        return;
    };
    let msg = Array::new();
    msg.push(&JsValue::from_str(&json));
    let obj = Object::new();
    let transfer = Array::new();
    for (name, bytes) in files {
        let arr = Uint8Array::from(bytes.as_slice());
        transfer.push(&arr.buffer());
        let _ = Reflect::set(&obj, &JsValue::from_str(&name), &arr);
    }
    msg.push(&obj);
    WORKER.with(|w| {
        if let Some(w) = w.borrow().as_ref() {
            let _ = w.post_message_with_transfer(&msg, &transfer);
        }
    });
}

pub fn send(req: &Request) {
    send_with(req, Vec::new());
}

/// `window.tunelabTest.loseDevice()`: destroys the worker's WebGPU device as a browser does
/// when it reclaims one, so that end-to-end tests can see what a run does then.
pub fn install_test_hooks() {
    let Some(window) = web_sys::window() else {
        return;
    };
    let hooks = Object::new();
    let lose = wasm_bindgen::closure::Closure::<dyn Fn()>::new(|| send(&Request::LoseDevice));
    let _ = js_sys::Reflect::set(&hooks, &"loseDevice".into(), lose.as_ref());
    lose.forget();
    let _ = js_sys::Reflect::set(&window, &"tunelabTest".into(), &hooks);
}
