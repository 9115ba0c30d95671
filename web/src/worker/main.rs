//! The training worker: a dedicated Web Worker that owns the model, the backend (WebGPU, or
//! the wasm CPU backend as a fallback) and browser storage, so the page never freezes.
//! Messages are `[json, payload]` arrays (see `tunelab_web::protocol`).

mod engine;
mod files;
mod live;
#[cfg(target_feature = "atomics")]
mod pool;
mod run;

use js_sys::{Array, Object, Reflect, Uint8Array};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use tunelab_web::protocol::{Event, Request};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

/// What the page asked the running loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Run,
    Pause,
    Stop,
}

/// The chosen backend, created once.
#[derive(Clone)]
pub(crate) enum Engine {
    Gpu(tunelab_wgpu::Wgpu),
    Cpu(tunelab_candle::Candle),
}

pub(crate) type GpuResult = Result<(tunelab_wgpu::Wgpu, tunelab_wgpu::AdapterReport), String>;

/// The worker's state, shared by the message handler and the training loop.
pub(crate) struct State {
    pub control: Cell<Control>,
    /// A training loop is running (it owns the model while not paused).
    pub training: Cell<bool>,
    /// The WebGPU backend and its adapter, or why there is none (tried once).
    pub gpu: RefCell<Option<GpuResult>>,
    /// The current (or last) run trains on WebGPU: only then can its failure be a lost device.
    pub on_gpu: Cell<bool>,
    /// The trained (or imported) model while no loop holds it.
    pub live: RefCell<Option<run::Live>>,
    /// The page asked the generation in progress to stop.
    pub stop_generating: Cell<bool>,
}

thread_local! {
    static STATE: Rc<State> = Rc::new(State {
        control: Cell::new(Control::Run),
        training: Cell::new(false),
        gpu: RefCell::new(None),
        on_gpu: Cell::new(false),
        live: RefCell::new(None),
        stop_generating: Cell::new(false),
    });
}

pub(crate) fn state() -> Rc<State> {
    STATE.with(Rc::clone)
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

/// Posts an event; `payload` (bytes) is transferred, not copied.
pub(crate) fn post(event: &Event, payload: Option<Vec<u8>>) {
    let json = serde_json::to_string(event).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","message":"cannot encode an event: {e}"}}"#)
    });
    let msg = Array::new();
    msg.push(&JsValue::from_str(&json));
    match payload {
        Some(bytes) => {
            let arr = Uint8Array::from(bytes.as_slice());
            let buf = arr.buffer();
            msg.push(&arr);
            let transfer = Array::of1(&buf);
            let _ = scope().post_message_with_transfer(&msg, &transfer);
        }
        None => {
            let _ = scope().post_message(&msg);
        }
    }
}

pub(crate) fn post_error(message: impl Into<String>) {
    post(
        &Event::Error {
            message: message.into(),
        },
        None,
    );
}

pub(crate) fn status(message: impl Into<String>) {
    post(
        &Event::Status {
            message: message.into(),
        },
        None,
    );
}

/// Binary payloads of a request, by name.
pub(crate) type Payload = BTreeMap<String, Vec<u8>>;

fn payload(v: &JsValue) -> Payload {
    let mut out = BTreeMap::new();
    if let Some(obj) = v.dyn_ref::<Object>() {
        for key in Object::keys(obj).iter() {
            if let (Some(name), Ok(val)) = (key.as_string(), Reflect::get(obj, &key)) {
                if let Some(arr) = val.dyn_ref::<Uint8Array>() {
                    out.insert(name, arr.to_vec());
                } else if let Some(buf) = val.dyn_ref::<js_sys::ArrayBuffer>() {
                    out.insert(name, Uint8Array::new(buf).to_vec());
                }
            }
        }
    }
    out
}

fn on_message(ev: MessageEvent) {
    let data = ev.data();
    let arr: Array = data.dyn_into().unwrap_or_default();
    let Some(json) = arr.get(0).as_string() else {
        post_error("the worker got a message it does not understand");
        return;
    };
    let files = payload(&arr.get(1));
    let req: Request = match serde_json::from_str(&json) {
        Ok(r) => r,
        Err(e) => {
            post_error(format!("bad request to the worker: {e}"));
            return;
        }
    };
    let st = state();
    match req {
        // Control messages act at once (the loop reads them between steps).
        Request::Pause => st.control.set(Control::Pause),
        Request::Continue => {
            st.control.set(Control::Run);
        }
        Request::Stop => st.control.set(Control::Stop),
        Request::LoseDevice => engine::lose_device(),
        Request::StopGenerating => st.stop_generating.set(true),
        other => wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = run::handle(other, files).await {
                post_error(e);
            }
        }),
    }
}

/// Threads the CPU backend's kernels run on.
pub(crate) fn cpu_threads() -> usize {
    #[cfg(target_feature = "atomics")]
    {
        rayon::current_num_threads()
    }
    #[cfg(not(target_feature = "atomics"))]
    {
        1
    }
}

fn main() {
    #[cfg(target_feature = "atomics")]
    if pool::is_pool_thread() {
        return;
    }
    console_error_panic_hook::set_once();
    let handler = Closure::<dyn FnMut(MessageEvent)>::new(on_message);
    scope().set_onmessage(Some(handler.as_ref().unchecked_ref()));
    handler.forget();
    wasm_bindgen_futures::spawn_local(async {
        // The threaded build starts its pool first: nothing may block on the pool's threads
        // before they run. If they cannot start, the page falls back to the plain worker.
        #[cfg(target_feature = "atomics")]
        if let Err(e) = pool::start(pool::hardware_threads()).await {
            post_error(e);
            return;
        }
        // The page waits for this before it sends anything.
        post(
            &Event::Status {
                message: "worker started".into(),
            },
            None,
        );
    });
}
