//! Writing exports, checkpoints and logs so that nothing the user had is lost: an export
//! folder is replaced whole or not at all, and a user's own folder is never emptied.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use tunelab_core::export;

/// The names of the files an export writes (any method): a folder holding only these (and
/// Tunelab's manifest) is a previous export, which a new one may replace.
const EXPORT_FILES: &[&str] = &[
    export::MANIFEST,
    export::ADAPTER_CONFIG,
    export::ADAPTER_WEIGHTS,
    export::BITFIT_WEIGHTS,
    "config.json",
    "model.safetensors",
    "tokenizer.json",
];

/// Whether `dir` may be written as an export: it does not exist, is empty, or is a previous
/// export of ours (its manifest and nothing but export files). Anything else is refused by
/// name, so a user's folder (`--out .`, say) is never emptied.
pub fn check_export_dir(dir: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if dir.is_file() => bail!(
            "{} is a file, not a folder: give --out a folder to write the export into ({e})",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        names.push((
            e.file_name().to_string_lossy().to_string(),
            e.path().is_file(),
        ));
    }
    if names.is_empty() {
        return Ok(());
    }
    let ours = names.iter().any(|(n, _)| n == export::MANIFEST);
    let foreign: Vec<&str> = names
        .iter()
        .filter(|(n, file)| !(*file && EXPORT_FILES.contains(&n.as_str())))
        .map(|(n, _)| n.as_str())
        .collect();
    if !ours || !foreign.is_empty() {
        let shown: Vec<&str> = if foreign.is_empty() {
            names.iter().map(|(n, _)| n.as_str()).take(5).collect()
        } else {
            foreign.into_iter().take(5).collect()
        };
        bail!(
            "{} is not empty and is not an earlier export of Tunelab (it holds {}); nothing was written: choose an empty or new folder",
            dir.display(),
            shown.join(", ")
        );
    }
    Ok(())
}

/// A sibling path of `dir` for staging (`.<name>.<what>-<pid>`).
fn sibling(dir: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("{} does not name a folder", dir.display()))?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let staged = format!(".{}.{what}-{}", name.to_string_lossy(), std::process::id());
    Ok(parent.map_or_else(|| PathBuf::from(&staged), |p| p.join(&staged)))
}

/// Writes an export's files into `dir`: first into a sibling folder, which then takes the
/// place of `dir` by renames, so `dir` always holds a whole export (the old or the new one).
/// `dir` must pass [`check_export_dir`].
pub fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    // `--out .` or `--out ..` name no folder to rename: resolve them first.
    let dir = &if dir.file_name().is_none() && dir.exists() {
        dir.canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?
    } else {
        dir.to_path_buf()
    };
    check_export_dir(dir)?;
    let tmp = sibling(dir, "new")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let staged = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (name, bytes) in files {
            std::fs::write(tmp.join(name), bytes)
                .with_context(|| format!("writing {}", tmp.join(name).display()))?;
        }
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = sibling(dir, "old")?;
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()));
    }
    if had_old {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing the previous export {}", old.display()))?;
    }
    Ok(())
}

/// Writes a file atomically (temporary file, then rename).
pub fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
