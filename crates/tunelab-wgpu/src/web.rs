//! Browser-only helpers: what WebGPU says about the adapter beyond what wgpu exposes.

use js_sys::{Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// `GPUAdapterInfo` fields (vendor `google`, architecture `swiftshader` on SwiftShader).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowserAdapterInfo {
    pub vendor: String,
    pub architecture: String,
    pub description: String,
}

fn get(target: &JsValue, key: &str) -> Result<JsValue, JsValue> {
    Reflect::get(target, &JsValue::from_str(key))
}

fn get_string(target: &JsValue, key: &str) -> String {
    get(target, key)
        .ok()
        .and_then(|v| v.as_string())
        .unwrap_or_default()
}

/// Asks `navigator.gpu` for an adapter and reads its `info`. Works in windows and workers.
pub async fn browser_adapter_info() -> Result<BrowserAdapterInfo, JsValue> {
    let navigator = get(&js_sys::global(), "navigator")?;
    let gpu = get(&navigator, "gpu")?;
    if gpu.is_undefined() || gpu.is_null() {
        return Err(JsValue::from_str("navigator.gpu is not available"));
    }
    let request = get(&gpu, "requestAdapter")?.dyn_into::<js_sys::Function>()?;
    let promise = request.call0(&gpu)?.dyn_into::<Promise>()?;
    let adapter = JsFuture::from(promise).await?;
    if adapter.is_null() {
        return Err(JsValue::from_str(
            "navigator.gpu.requestAdapter() returned null",
        ));
    }
    let info = get(&adapter, "info")?;
    Ok(BrowserAdapterInfo {
        vendor: get_string(&info, "vendor"),
        architecture: get_string(&info, "architecture"),
        description: get_string(&info, "description"),
    })
}
