//! `tunelab info` on broken asset folders: the error names the file and the fix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure

use std::process::Command;

fn tunelab(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(args)
        .env_remove("TUNELAB_ASSETS")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn missing_assets_name_the_manifest_and_the_fetch_command() {
    let dir = std::env::temp_dir().join(format!("tunelab-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, text) = tunelab(&["info", "--assets", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("manifest.json is missing"), "{text}");
    assert!(text.contains("cargo xtask assets"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn malformed_manifest_is_reported_not_panicked() {
    let dir = std::env::temp_dir().join(format!("tunelab-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("manifest.json"), "{ not json").unwrap();
    let (ok, text) = tunelab(&["info", "--assets", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("is not valid"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}
