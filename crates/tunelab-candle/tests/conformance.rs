//! The shared conformance suite (`tunelab-conformance`) on the candle CPU backend — its fused
//! kernels — and on its composite path, the candle ops CUDA runs.

#[test]
fn the_cpu_backend_passes_the_conformance_suite() {
    pollster::block_on(tunelab_conformance::run(&tunelab_candle::Candle::cpu()));
}

#[test]
fn the_composite_path_passes_the_conformance_suite() {
    pollster::block_on(tunelab_conformance::run(
        &tunelab_candle::Candle::cpu_composite(),
    ));
}
