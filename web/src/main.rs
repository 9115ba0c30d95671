//! Entry point of the web app (built by Trunk from `web/index.html`).

mod app;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
