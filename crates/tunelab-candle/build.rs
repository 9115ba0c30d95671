//! Sets `cfg(parallel)` where the CPU kernels can run on rayon's threads: natively, and in wasm
//! built with shared memory and atomics (the browser's threaded worker, whose rayon threads
//! are Web Workers). A plain wasm build has one thread and runs the kernels' loops in order.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(parallel)");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if arch != "wasm32" || features.split(',').any(|f| f == "atomics") {
        println!("cargo::rustc-cfg=parallel");
    }
}
