//! Entry point of the web app's page (built by Trunk from `web/index.html`); the training
//! runs in the worker (`src/worker/`).

mod actions;
mod app;
mod bridge;
mod chart;
mod form;
mod panels;

fn main() {
    console_error_panic_hook::set_once();
    bridge::install_test_hooks();
    leptos::mount::mount_to_body(app::App);
}
