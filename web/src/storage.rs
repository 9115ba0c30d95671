//! Browser storage: the origin private file system (OPFS). Paths are `/`-separated under the
//! origin's root. A write goes to a swap file and replaces the old contents only when it is
//! closed, so a reload in the middle of a write leaves the previous version intact.

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

async fn root(path: &str) -> Result<FileSystemDirectoryHandle, StorageError> {
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
    // `keys()` is an async iterator.
    let keys = Reflect::get(&dir, &"keys".into())
        .and_then(|f| f.unchecked_into::<js_sys::Function>().call0(&dir))
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
