//! Zip archives of exported files: written stored (safetensors barely compress), read stored
//! or deflated (as most zip tools write them).

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};

/// A zip holding `files` at its top level.
pub fn pack(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    // A fixed timestamp: wasm has no clock for the zip crate to read.
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .large_file(files.iter().any(|(_, b)| b.len() >= u32::MAX as usize));
    for (name, bytes) in files {
        w.start_file(name.as_str(), opts)
            .map_err(|e| format!("zip {name}: {e}"))?;
        w.write_all(bytes).map_err(|e| format!("zip {name}: {e}"))?;
    }
    Ok(w.finish().map_err(|e| format!("zip: {e}"))?.into_inner())
}

/// The most an archive may unpack to: more than any export of a model that trains in a
/// browser, and far less than a "zip bomb" (a few kilobytes that inflate to gigabytes).
pub const MAX_UNPACKED: u64 = 4 << 30;

/// The files of a zip by their base name (folders inside the zip are flattened).
pub fn unpack(file: &str, bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    unpack_at_most(file, bytes, MAX_UNPACKED)
}

/// [`unpack`] with a bound on the unpacked size (whatever sizes the archive declares).
pub fn unpack_at_most(
    file: &str,
    bytes: &[u8],
    limit: u64,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("{file}: not a zip archive ({e})"))?;
    let mut out = BTreeMap::new();
    let mut left = limit;
    for i in 0..z.len() {
        let mut f = z.by_index(i).map_err(|e| format!("{file}: {e}"))?;
        if f.is_dir() {
            continue;
        }
        let full = f.name().map_err(|e| format!("{file}: {e}"))?.to_string();
        let name = full.rsplit('/').next().unwrap_or_default().to_string();
        let mut data = Vec::new();
        (&mut f)
            .take(left.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| format!("{file}: {name}: {e}"))?;
        left = left.checked_sub(data.len() as u64).ok_or_else(|| {
            format!(
                "{file}: unpacks to more than {} MiB (at `{name}`); an export is smaller",
                limit >> 20
            )
        })?;
        out.insert(name, data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pack_then_unpack_gives_the_files_back() {
        let files = vec![
            ("adapter_config.json".to_string(), b"{\"r\": 8}".to_vec()),
            ("adapter_model.safetensors".to_string(), vec![7u8; 1000]),
        ];
        let z = super::pack(&files).unwrap();
        let back = super::unpack("a.zip", &z).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back["adapter_config.json"], files[0].1);
        assert_eq!(back["adapter_model.safetensors"], files[1].1);
        // A zip made by another tool is usually deflated: it reads the same.
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default());
        for (name, bytes) in &files {
            w.start_file(format!("export/{name}"), opts).unwrap();
            std::io::Write::write_all(&mut w, bytes).unwrap();
        }
        let deflated = w.finish().unwrap().into_inner();
        assert!(deflated.len() < z.len(), "the archive is not compressed");
        let back = super::unpack("deflated.zip", &deflated).unwrap();
        assert_eq!(back["adapter_model.safetensors"], files[1].1);
        assert_eq!(back["adapter_config.json"], files[0].1);
        assert!(
            super::unpack("bad.zip", b"not a zip")
                .unwrap_err()
                .contains("bad.zip")
        );
    }

    #[test]
    fn an_archive_that_unpacks_past_the_bound_is_refused() {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default());
        w.start_file("zeros.bin", opts).unwrap();
        std::io::Write::write_all(&mut w, &vec![0u8; 3 << 20]).unwrap();
        let z = w.finish().unwrap().into_inner();
        assert!(z.len() < 64 << 10, "zeros deflate to {} bytes", z.len());
        let err = super::unpack_at_most("bomb.zip", &z, 2 << 20).unwrap_err();
        assert!(
            err.contains("bomb.zip") && err.contains("more than 2 MiB"),
            "{err}"
        );
        // At the bound itself it unpacks.
        assert_eq!(
            super::unpack_at_most("bomb.zip", &z, 3 << 20).unwrap()["zeros.bin"].len(),
            3 << 20
        );
    }
}
