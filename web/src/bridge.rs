//! The page's side of the worker: starting it, sending requests, receiving events.

use js_sys::{Array, Object, Reflect, Uint8Array};
use std::cell::RefCell;
use tunelab_web::protocol::{Event, Request};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, Worker};

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Starts the worker; `on_event` gets every event with its payload (if any).
pub fn start(on_event: impl Fn(Event, Option<Vec<u8>>) + 'static) -> Result<(), String> {
    // Trunk writes the worker's loader next to index.html (see web/index.html).
    let worker = Worker::new("./tunelab-worker_loader.js")
        .map_err(|e| format!("cannot start the training worker: {e:?}"))?;
    let handler = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let arr: Array = ev.data().dyn_into().unwrap_or_default();
        let Some(json) = arr.get(0).as_string() else {
            return;
        };
        let payload = arr.get(1).dyn_into::<Uint8Array>().ok().map(|a| a.to_vec());
        match serde_json::from_str::<Event>(&json) {
            Ok(e) => on_event(e, payload),
            Err(e) => on_event(
                Event::Error {
                    message: format!("unreadable message from the worker: {e}"),
                },
                None,
            ),
        }
    });
    worker.set_onmessage(Some(handler.as_ref().unchecked_ref()));
    handler.forget();
    let onerror = Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |e: web_sys::ErrorEvent| {
        web_sys::console::error_1(&format!("worker error: {}", e.message()).into());
    });
    worker.set_onerror(Some(onerror.as_ref().unchecked_ref()));
    onerror.forget();
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
