//! Browser storage: the origin private file system (OPFS). Everything Tunelab keeps lives in
//! one folder, [`FOLDER`], at the origin's root: paths here are `/`-separated inside it, and
//! [`remove_all`] removes that folder only (other apps on the same origin keep their files).
//! A write goes to a swap file and replaces the old contents only when it is closed, so a
//! reload in the middle of a write leaves the previous version intact.

use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    File, FileSystemDirectoryHandle, FileSystemFileHandle, FileSystemGetDirectoryOptions,
    FileSystemGetFileOptions, FileSystemRemoveOptions, FileSystemWritableFileStream,
    StorageManager,
};

/// A failed storage operation, naming the path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("browser storage, {path}: {reason}")]
pub struct StorageError {
    pub path: String,
    pub reason: String,
}

fn js_reason(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| {
            Reflect::get(e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

fn err(path: &str, e: &JsValue) -> StorageError {
    StorageError {
        path: path.into(),
        reason: js_reason(e),
    }
}

/// Tunelab's folder at the origin's root.
pub const FOLDER: &str = "tunelab";

/// What earlier versions kept at the origin's root itself, each with a file that shows it is
/// Tunelab's (`models/<name>/` holds a model's `config.json`): moved into [`FOLDER`] on first
/// use, and removed by [`remove_all`] if a move failed. A folder of the same name without that
/// file belongs to somebody else and is left alone.
const LEGACY: [(&str, Option<&str>); 3] = [
    ("run", Some("spec.json")),
    ("runs", Some("history.json")),
    ("models", None),
];

/// Whether the legacy folder `dir` is Tunelab's.
async fn legacy_is_ours(dir: &FileSystemDirectoryHandle, marker: Option<&str>) -> bool {
    match marker {
        Some(file) => JsFuture::from(dir.get_file_handle(file)).await.is_ok(),
        None => {
            for name in keys(dir, "models").await.unwrap_or_default() {
                if let Ok(sub) = JsFuture::from(dir.get_directory_handle(&name)).await {
                    let sub: FileSystemDirectoryHandle = sub.unchecked_into();
                    if JsFuture::from(sub.get_file_handle("tokenizer.json"))
                        .await
                        .is_ok()
                    {
                        return true;
                    }
                }
            }
            false
        }
    }
}

/// The legacy folders at the origin's root that are Tunelab's.
async fn legacy(
    origin: &FileSystemDirectoryHandle,
) -> Vec<(&'static str, FileSystemDirectoryHandle)> {
    let mut out = Vec::new();
    for (name, marker) in LEGACY {
        if let Ok(d) = JsFuture::from(origin.get_directory_handle(name)).await {
            let d: FileSystemDirectoryHandle = d.unchecked_into();
            if legacy_is_ours(&d, marker).await {
                out.push((name, d));
            }
        }
    }
    out
}

thread_local! {
    static MIGRATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

async fn origin_root(path: &str) -> Result<FileSystemDirectoryHandle, StorageError> {
    let global = js_sys::global();
    let navigator = Reflect::get(&global, &"navigator".into()).map_err(|e| err(path, &e))?;
    let storage: StorageManager = Reflect::get(&navigator, &"storage".into())
        .map_err(|e| err(path, &e))?
        .dyn_into()
        .map_err(|_| StorageError {
            path: path.into(),
            reason: "this browser has no storage manager (navigator.storage)".into(),
        })?;
    let dir = JsFuture::from(storage.get_directory())
        .await
        .map_err(|e| err(path, &e))?;
    Ok(dir.unchecked_into())
}

/// Tunelab's folder (created when missing).
async fn root(path: &str) -> Result<FileSystemDirectoryHandle, StorageError> {
    let origin = origin_root(path).await?;
    let opts = FileSystemGetDirectoryOptions::new();
    opts.set_create(true);
    let ours: FileSystemDirectoryHandle =
        JsFuture::from(origin.get_directory_handle_with_options(FOLDER, &opts))
            .await
            .map_err(|e| err(path, &e))?
            .unchecked_into();
    if !MIGRATED.with(|m| m.replace(true)) {
        migrate(&origin, &ours).await;
    }
    Ok(ours)
}

/// Moves what an earlier version kept at the origin's root into Tunelab's folder (a saved run
/// and the model cache survive the update). `FileSystemHandle.move` is not in every browser:
/// where it is missing or fails, the old entries stay where they are.
async fn migrate(origin: &FileSystemDirectoryHandle, ours: &FileSystemDirectoryHandle) {
    for (name, old) in legacy(origin).await {
        if JsFuture::from(ours.get_directory_handle(name))
            .await
            .is_ok()
        {
            continue;
        }
        let Ok(mover) = Reflect::get(&old, &"move".into()) else {
            continue;
        };
        let Some(mover) = mover.dyn_ref::<js_sys::Function>() else {
            continue;
        };
        if let Ok(p) = mover.call1(&old, ours) {
            let _ = JsFuture::from(js_sys::Promise::resolve(&p)).await;
        }
    }
}

/// Removes everything Tunelab keeps in this browser, and nothing else of the origin's.
pub async fn remove_all() -> Result<(), StorageError> {
    let origin = origin_root(FOLDER).await?;
    let opts = FileSystemRemoveOptions::new();
    opts.set_recursive(true);
    let old: Vec<&str> = legacy(&origin).await.into_iter().map(|(n, _)| n).collect();
    for name in std::iter::once(FOLDER).chain(old) {
        match JsFuture::from(origin.remove_entry_with_options(name, &opts)).await {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(err(name, &e)),
        }
    }
    Ok(())
}

/// The folder holding `path`'s last segment, created when `create`.
async fn parent(
    path: &str,
    create: bool,
) -> Result<(FileSystemDirectoryHandle, String), StorageError> {
    let mut dir = root(path).await?;
    let mut parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let name = parts.pop().unwrap_or_default().to_string();
    let opts = FileSystemGetDirectoryOptions::new();
    opts.set_create(create);
    for p in parts {
        let next = JsFuture::from(dir.get_directory_handle_with_options(p, &opts))
            .await
            .map_err(|e| err(path, &e))?;
        dir = next.unchecked_into();
    }
    Ok((dir, name))
}

fn not_found(e: &JsValue) -> bool {
    Reflect::get(e, &"name".into())
        .ok()
        .and_then(|n| n.as_string())
        .is_some_and(|n| n == "NotFoundError" || n == "TypeMismatchError")
}

/// The file's bytes, or `None` when it does not exist.
pub async fn read(path: &str) -> Result<Option<Vec<u8>>, StorageError> {
    let (dir, name) = match parent(path, false).await {
        Ok(x) => x,
        Err(_) => return Ok(None),
    };
    let handle = match JsFuture::from(dir.get_file_handle(&name)).await {
        Ok(h) => h.unchecked_into::<FileSystemFileHandle>(),
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(err(path, &e)),
    };
    let file: File = JsFuture::from(handle.get_file())
        .await
        .map_err(|e| err(path, &e))?
        .unchecked_into();
    let buf = JsFuture::from(file.array_buffer())
        .await
        .map_err(|e| err(path, &e))?;
    Ok(Some(Uint8Array::new(&buf).to_vec()))
}

/// The file as text, or `None`.
pub async fn read_text(path: &str) -> Result<Option<String>, StorageError> {
    Ok(read(path)
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Replaces the file's contents (creating folders as needed).
pub async fn write(path: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let (dir, name) = parent(path, true).await?;
    let opts = FileSystemGetFileOptions::new();
    opts.set_create(true);
    let handle: FileSystemFileHandle =
        JsFuture::from(dir.get_file_handle_with_options(&name, &opts))
            .await
            .map_err(|e| err(path, &e))?
            .unchecked_into();
    let stream: FileSystemWritableFileStream = JsFuture::from(handle.create_writable())
        .await
        .map_err(|e| err(path, &e))?
        .unchecked_into();
    // Large files are written in pieces (one copy of 8 MiB at a time into JS memory).
    for chunk in bytes.chunks(8 << 20) {
        let arr = Uint8Array::from(chunk);
        JsFuture::from(
            stream
                .write_with_js_u8_array(&arr)
                .map_err(|e| err(path, &e))?,
        )
        .await
        .map_err(|e| err(path, &e))?;
    }
    JsFuture::from(stream.close())
        .await
        .map_err(|e| err(path, &e))?;
    Ok(())
}

/// Removes a file or a folder with everything in it; absent is fine.
pub async fn remove(path: &str) -> Result<(), StorageError> {
    let (dir, name) = match parent(path, false).await {
        Ok(x) => x,
        Err(_) => return Ok(()),
    };
    let opts = FileSystemRemoveOptions::new();
    opts.set_recursive(true);
    match JsFuture::from(dir.remove_entry_with_options(&name, &opts)).await {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(err(path, &e)),
    }
}

/// Names in a folder (empty when it does not exist).
pub async fn list(path: &str) -> Result<Vec<String>, StorageError> {
    let dir = if path.is_empty() {
        root(path).await?
    } else {
        let (parent, name) = match parent(path, false).await {
            Ok(x) => x,
            Err(_) => return Ok(Vec::new()),
        };
        match JsFuture::from(parent.get_directory_handle(&name)).await {
            Ok(d) => d.unchecked_into(),
            Err(_) => return Ok(Vec::new()),
        }
    };
    keys(&dir, path).await
}

/// The names in `dir`, sorted.
async fn keys(dir: &FileSystemDirectoryHandle, path: &str) -> Result<Vec<String>, StorageError> {
    // `keys()` is an async iterator.
    let keys = Reflect::get(dir, &"keys".into())
        .and_then(|f| f.unchecked_into::<js_sys::Function>().call0(dir))
        .map_err(|e| err(path, &e))?;
    let next: js_sys::Function = Reflect::get(&keys, &"next".into())
        .map_err(|e| err(path, &e))?
        .unchecked_into();
    let mut out = Vec::new();
    loop {
        let p: js_sys::Promise = next
            .call0(&keys)
            .map_err(|e| err(path, &e))?
            .unchecked_into();
        let r = JsFuture::from(p).await.map_err(|e| err(path, &e))?;
        if Reflect::get(&r, &"done".into())
            .map(|d| d.is_truthy())
            .unwrap_or(true)
        {
            break;
        }
        if let Some(s) = Reflect::get(&r, &"value".into())
            .ok()
            .and_then(|v| v.as_string())
        {
            out.push(s);
        }
    }
    out.sort();
    Ok(out)
}

/// Browser storage as the saved run's [`Store`](crate::saved::Store).
#[derive(Debug, Clone, Copy)]
pub struct Opfs;

impl crate::saved::Store for Opfs {
    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        read(path).await.map_err(|e| e.to_string())
    }
    async fn write(&self, path: &str, bytes: &[u8]) -> Result<(), String> {
        write(path, bytes).await.map_err(|e| e.to_string())
    }
    async fn remove(&self, path: &str) -> Result<(), String> {
        remove(path).await.map_err(|e| e.to_string())
    }
    async fn list(&self, dir: &str) -> Result<Vec<String>, String> {
        list(dir).await.map_err(|e| e.to_string())
    }
}
