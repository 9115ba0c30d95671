//! `cargo xtask serve`: build the web app with Trunk and serve it with the assets.
//!
//! `/` serves `dist/` (Trunk's output); `/assets/` serves the verified `assets/` folder, so the
//! app loads the default model and sample data from the same origin.

use crate::sh::{cmd, root, run};
use crate::{assets, setup};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Set-up and assets when missing, then a release build of the web app into `dist/`.
pub fn prepare() -> anyhow::Result<()> {
    if !setup::is_complete() {
        setup::run()?;
    }
    assets::ensure(false)?;
    build_web()
}

/// Trunk's build of the page and the plain worker, then the threaded worker.
pub fn build_web() -> anyhow::Result<()> {
    let mut c = cmd("trunk", &["build", "--release"]);
    c.current_dir(root())
        .env("TRUNK_OFFLINE", "true")
        .env("TRUNK_SKIP_VERSION_CHECK", "true")
        .env("NO_COLOR", "true");
    run(&mut c)?;
    build_threaded_worker()
}

/// Rust flags of the threaded worker, added to the wasm target's in `.cargo/config.toml`:
/// atomics, and a linked module whose memory is shared and imported (what Web Workers need to
/// run one module's threads), with room to grow to wasm32's 4 GiB (a shared memory's maximum
/// is fixed when it is created). The linker is not told by `+atomics` alone; the TLS exports
/// are what wasm-bindgen's thread support initialises each thread with. Relaxed SIMD gives the
/// CPU backend's matmul its fused multiply-add; every browser that loads this build is checked
/// for it first (`web/src/bridge.rs`), so the plain worker stays loadable everywhere.
const THREADED_RUSTFLAGS: &str = "target.wasm32-unknown-unknown.rustflags = [\
    '-C', 'target-feature=+atomics,+bulk-memory,+mutable-globals,+relaxed-simd', \
    '-C', 'link-arg=--shared-memory', '-C', 'link-arg=--import-memory', \
    '-C', 'link-arg=--max-memory=4294967296', \
    '-C', 'link-arg=--export=__wasm_init_tls', '-C', 'link-arg=--export=__tls_size', \
    '-C', 'link-arg=--export=__tls_align', '-C', 'link-arg=--export=__tls_base']";

/// The loader of the threaded worker: it says where the glue script is (the pool's threads
/// load it too; see web/src/worker/pool.rs) and where the app's root is (the worker fetches
/// the assets relative to it), loads the glue and starts the module.
const THREADED_LOADER: &str = "\
// Tunelab's threaded training worker; written by `cargo xtask`'s web build (crates/xtask/src/serve.rs).
self.tunelabGlue = new URL('tunelab-worker.js', self.location.href).href;
self.tunelabRoot = new URL('../', self.location.href).href;
importScripts(self.tunelabGlue);
wasm_bindgen({ module_or_path: new URL('tunelab-worker_bg.wasm', self.location.href).href });
";

/// The training worker built with shared memory into `dist/threads/`: the page starts it
/// when it is cross-origin isolated (this server's headers), so the wasm CPU backend runs its
/// kernels on every core (see web/src/bridge.rs).
///
/// The standard library has to be rebuilt with atomics: `-Z build-std`, an unstable cargo
/// flag, which `RUSTC_BOOTSTRAP=1` allows on the project's stable toolchain (setup installs
/// its `rust-src`). A separate target folder keeps these flags from rebuilding the plain
/// wasm build's crates.
pub fn build_threaded_worker() -> anyhow::Result<()> {
    let target_dir = crate::sh::target_dir().join("wasm-threads");
    let target_dir_arg = target_dir.to_string_lossy().to_string();
    let mut c = cmd(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "tunelab-web",
            "--bin",
            "tunelab-worker",
            "--target",
            setup::WASM_TARGET,
            "-Z",
            "build-std=std,panic_abort",
            "--config",
            THREADED_RUSTFLAGS,
            "--target-dir",
            &target_dir_arg,
        ],
    );
    c.current_dir(root()).env("RUSTC_BOOTSTRAP", "1");
    run(&mut c)?;
    let wasm = target_dir.join(format!(
        "{}/release/tunelab-worker.wasm",
        setup::WASM_TARGET
    ));
    let out = root().join("dist/threads");
    run(cmd(
        "wasm-bindgen",
        &[
            "--target",
            "no-modules",
            "--no-typescript",
            "--out-dir",
            &out.to_string_lossy(),
            &wasm.to_string_lossy(),
        ],
    )
    .current_dir(root()))?;
    std::fs::write(out.join("tunelab-worker_loader.js"), THREADED_LOADER)?;
    Ok(())
}

pub fn main(port: u16, no_build: bool) -> anyhow::Result<()> {
    if no_build {
        assets::check()?;
    } else {
        prepare()?;
    }
    let server = Server::start(port)?;
    println!("Tunelab is being served at {}", server.url());
    println!("(Ctrl-C stops it)");
    server.join();
    Ok(())
}

/// A static file server on 127.0.0.1 for `dist/` and `assets/`.
pub struct Server {
    http: Arc<tiny_http::Server>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Starts serving on `port` (0 picks a free port).
    pub fn start(port: u16) -> anyhow::Result<Self> {
        Self::start_in(port, root().join("dist"), assets::assets_dir())
    }

    /// Serves `dist` (the built app) and `assets` under `/assets/`.
    pub fn start_in(port: u16, dist: PathBuf, assets: PathBuf) -> anyhow::Result<Self> {
        anyhow::ensure!(
            dist.join("index.html").exists(),
            "{} has no index.html: build the app first (cargo xtask serve builds it)",
            dist.display()
        );
        let http = tiny_http::Server::http(("127.0.0.1", port))
            .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let index = std::fs::read_to_string(dist.join("index.html"))
            .with_context(|| format!("reading {}", dist.join("index.html").display()))?;
        let csp: Arc<str> = content_security_policy(&index).into();
        let http = Arc::new(http);
        let server = Arc::clone(&http);
        let port = http.server_addr().to_ip().map_or(0, |a| a.port());
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            for request in server.incoming_requests() {
                // At most MAX_CONNECTIONS requests are served at once; more get a 503 at once
                // instead of a thread each.
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    let _ = request
                        .respond(tiny_http::Response::from_string("busy").with_status_code(503));
                    continue;
                }
                let (dist, assets, busy) = (dist.clone(), assets.clone(), Arc::clone(&busy));
                let csp = Arc::clone(&csp);
                std::thread::spawn(move || {
                    respond(request, port, &dist, &assets, &csp);
                    busy.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self { http, thread })
    }

    pub fn url(&self) -> String {
        let port = self
            .http
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .unwrap_or(0);
        format!("http://127.0.0.1:{port}/")
    }

    pub fn stop(self) {
        self.http.unblock();
        let _ = self.thread.join();
    }

    fn join(self) {
        let _ = self.thread.join();
    }
}

/// Maps a URL path to a file under `dist/` or `assets/`; refuses `..` and absolute segments.
pub fn resolve(url: &str, dist: &Path, assets: &Path) -> Option<PathBuf> {
    let path = url.split(['?', '#']).next().unwrap_or("/");
    let (base, rest) = match path.strip_prefix("/assets/") {
        Some(rest) => (assets, rest),
        None => (dist, path.trim_start_matches('/')),
    };
    let rest = if rest.is_empty() { "index.html" } else { rest };
    let mut out = base.to_path_buf();
    for seg in rest.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." || seg.contains('\\') {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript",
        "wasm" => "application/wasm",
        "css" => "text/css",
        "json" => "application/json",
        "jsonl" | "conll" | "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

/// Requests served at once; the rest are answered 503.
const MAX_CONNECTIONS: usize = 64;

/// A file's response headers: its type (and `nosniff`, so a browser never reads a file as
/// another type), and cross-origin isolation (COOP + COEP), without which a page cannot share
/// memory with its workers: the threaded training worker needs it. Everything the app loads
/// is same-origin, so `require-corp` blocks nothing of its own. Every response carries the
/// app's Content-Security-Policy (workers take theirs from their script's response).
fn headers<'a>(path: &Path, csp: &'a str) -> [(&'static str, &'a str); 5] {
    [
        ("Content-Type", content_type(path)),
        ("Content-Security-Policy", csp),
        ("X-Content-Type-Options", "nosniff"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Embedder-Policy", "require-corp"),
    ]
}

/// Whether a request's `Host` header names this server on the loopback interface
/// (`127.0.0.1`, `localhost` or `[::1]`, with the server's port): a page of another site
/// that rebinds its DNS name to 127.0.0.1 sends its own name and is refused.
pub fn host_allowed(host: Option<&str>, port: u16) -> bool {
    let Some(host) = host else {
        return false;
    };
    let (name, p) = match host.rsplit_once(':') {
        Some((n, p)) if !n.is_empty() => (n, p),
        _ => return false,
    };
    p.parse::<u16>() == Ok(port) && ["127.0.0.1", "localhost", "[::1]"].contains(&name)
}

/// The policy the app works under and nothing more: its own scripts, styles, workers and
/// fetches (`'self'`), the one inline module script Trunk writes into `index.html` (by its
/// sha256), compiling WebAssembly (`'wasm-unsafe-eval'`), the thread pool's workers from blob
/// URLs, downloads from blob URLs, inline `style` attributes (Leptos sets some); no plugins,
/// no framing, no `<base>`, no form posts.
pub fn content_security_policy(index_html: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut hashes = String::new();
    let mut rest = index_html;
    while let Some(open) = rest.find("<script") {
        let after = &rest[open..];
        let Some(tag_end) = after.find('>') else {
            break;
        };
        let tag = &after[..tag_end];
        let body_start = &after[tag_end + 1..];
        let Some(close) = body_start.find("</script>") else {
            break;
        };
        let body = &body_start[..close];
        if !tag.contains(" src=") && !body.trim().is_empty() {
            let digest = sha2::Sha256::digest(body.as_bytes());
            hashes.push_str(&format!(
                " 'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ));
        }
        rest = &body_start[close..];
    }
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{hashes}; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; \
         worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

fn respond(request: tiny_http::Request, port: u16, dist: &Path, assets: &Path, csp: &str) {
    let host = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str().to_string());
    if !host_allowed(host.as_deref(), port) {
        let r = request.respond(
            tiny_http::Response::from_string("unknown host: open the app at 127.0.0.1")
                .with_status_code(421),
        );
        if let Err(e) = r {
            eprintln!("serve: {e}");
        }
        return;
    }
    let file = resolve(request.url(), dist, assets)
        .filter(|p| p.is_file())
        .and_then(|p| std::fs::File::open(&p).ok().map(|f| (p, f)));
    let result = match file {
        Some((path, f)) => {
            let mut response = tiny_http::Response::from_file(f);
            for (name, value) in headers(&path, csp) {
                if let Ok(h) = tiny_http::Header::from_bytes(name, value) {
                    response = response.with_header(h);
                }
            }
            request.respond(response)
        }
        None => {
            request.respond(tiny_http::Response::from_string("not found").with_status_code(404))
        }
    };
    if let Err(e) = result {
        eprintln!("serve: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::{content_security_policy, host_allowed, resolve};
    use std::path::Path;

    #[test]
    fn the_policy_allows_the_inline_script_by_its_hash_only() {
        let html = "<html><head><script type=\"module\">\nimport init from './a.js';\n</script>\
                    <script src=\"./b.js\"></script></head></html>";
        let csp = content_security_policy(html);
        // sha256 of "\nimport init from './a.js';\n" in base64, by Python's hashlib.
        assert!(
            csp.contains(
                "script-src 'self' 'wasm-unsafe-eval' 'sha256-b8dPs/81WrgdLiiXFdRIvTN+J/lNbYF2vbwDBORDYHw='; "
            ),
            "{csp}"
        );
        assert_eq!(csp.matches("'sha256-").count(), 1, "{csp}");
        let scripts = csp
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap();
        assert!(
            !scripts.contains("'unsafe-inline'") && !scripts.contains("'unsafe-eval'"),
            "{scripts}"
        );
        for part in [
            "default-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "worker-src 'self' blob:",
        ] {
            assert!(csp.contains(part), "{part} missing: {csp}");
        }
        // Another script gets another hash.
        let other = content_security_policy(&html.replace("a.js", "c.js"));
        assert_ne!(csp, other);
    }

    #[test]
    fn only_loopback_names_with_the_port_are_served() {
        assert!(host_allowed(Some("127.0.0.1:8080"), 8080));
        assert!(host_allowed(Some("localhost:8080"), 8080));
        assert!(host_allowed(Some("[::1]:8080"), 8080));
        assert!(!host_allowed(Some("evil.example:8080"), 8080));
        assert!(!host_allowed(Some("127.0.0.1:9999"), 8080));
        assert!(!host_allowed(Some("127.0.0.1"), 8080));
        assert!(!host_allowed(None, 8080));
    }

    /// A live server on a free loopback port, serving `dir` (with an `index.html`).
    fn live(name: &str) -> (super::Server, u16, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("tunelab-serve-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "<p>hi</p>").unwrap();
        let server = super::Server::start_in(0, dir.clone(), dir.clone()).unwrap();
        let port = server.http.server_addr().to_ip().unwrap().port();
        (server, port, dir)
    }

    /// Sends `GET path` with `host` on a new connection; the response is left to read.
    fn request(port: u16, host: &str, path: &str) -> std::net::TcpStream {
        use std::io::Write as _;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        s
    }

    fn response(mut s: std::net::TcpStream) -> String {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    }

    /// The server answers with the security headers and refuses a foreign `Host`.
    #[test]
    fn a_live_server_sends_its_headers_and_refuses_other_hosts() {
        let (server, port, dir) = live("headers");
        let get = |host: &str| response(request(port, host, "/"));
        let ok = get(&format!("127.0.0.1:{port}"));
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        for h in [
            "X-Content-Type-Options: nosniff",
            "Cross-Origin-Opener-Policy: same-origin",
            "Cross-Origin-Embedder-Policy: require-corp",
            "Content-Security-Policy: default-src 'self'; script-src 'self' 'wasm-unsafe-eval';",
        ] {
            assert!(ok.contains(h), "{h} missing: {ok}");
        }
        let refused = get(&format!("rebound.example:{port}"));
        assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");
        server.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// At most MAX_CONNECTIONS requests are served at once: clients that request a large
    /// file and never read it hold their server threads; the next request gets 503 at once.
    #[test]
    fn requests_beyond_the_bound_get_503() {
        use std::io::Read as _;
        let (server, port, dir) = live("bound");
        // Far more than loopback's socket buffers: the server blocks writing it.
        std::fs::write(dir.join("big.bin"), vec![7u8; 32 << 20]).unwrap();
        let host = format!("127.0.0.1:{port}");
        let request = |path: &str| request(port, &host, path);
        let held: Vec<_> = (0..super::MAX_CONNECTIONS)
            .map(|_| request("/big.bin"))
            .collect();
        // Each held request is being answered: its first bytes arrive (and then it stalls).
        for s in &held {
            let mut first = [0u8; 12];
            let mut s = s.try_clone().unwrap();
            s.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
        }
        let extra = request("/index.html");
        extra
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let out = response(extra);
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        drop(held);
        // Once they are gone, requests are served again.
        let mut again = String::new();
        let mut ok = false;
        for _ in 0..100 {
            again = response(request("/index.html"));
            if again.starts_with("HTTP/1.1 200") {
                ok = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(ok, "{again}");
        server.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn urls_map_into_dist_and_assets_only() {
        let (d, a) = (Path::new("/d"), Path::new("/a"));
        assert_eq!(resolve("/", d, a).unwrap(), Path::new("/d/index.html"));
        assert_eq!(
            resolve("/app.wasm?x=1", d, a).unwrap(),
            Path::new("/d/app.wasm")
        );
        assert_eq!(
            resolve("/assets/manifest.json", d, a).unwrap(),
            Path::new("/a/manifest.json")
        );
        assert!(resolve("/assets/../secret", d, a).is_none());
        assert!(resolve("/../etc/passwd", d, a).is_none());
        assert!(resolve("//etc/passwd", d, a).is_some_and(|p| p.starts_with("/d")));
    }
}
