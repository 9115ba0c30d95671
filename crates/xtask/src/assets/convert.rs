//! Conversions of the registry packages' formats into the documented asset formats, and the
//! deterministic splits.

use anyhow::{Context, bail};
use serde::Serialize;

/// A labelled text, one JSONL line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub text: String,
    pub label: String,
}

/// SplitMix64: a small, fixed pseudo-random sequence, so splits never depend on a crate's
/// version.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Sizes `(train, validation, test)` for `n` items: 10% each for validation and test (at least
/// one each when `n >= 3`), the rest for training.
pub fn split_sizes(n: usize) -> (usize, usize, usize) {
    let held = if n >= 3 {
        ((n as f64 * 0.1).round() as usize).max(1)
    } else {
        0
    };
    (n - 2 * held, held, held)
}

/// `items` shuffled with the split seed mixed with `salt`.
pub fn shuffled<T>(mut items: Vec<T>, salt: u64) -> Vec<T> {
    SplitMix64::new(super::SPLIT_SEED ^ salt).shuffle(&mut items);
    items
}

/// Shuffles `items` with the split seed (mixed with `salt`) and cuts them 80/10/10.
pub fn split<T>(items: Vec<T>, salt: u64) -> [Vec<T>; 3] {
    let mut items = shuffled(items, salt);
    let (train, val, _) = split_sizes(items.len());
    let test = items.split_off(train + val);
    let val_items = items.split_off(train);
    [items, val_items, test]
}

/// One split file: `(split name, contents, number of examples)`.
pub type SplitFile = (&'static str, String, usize);

pub const SPLIT_NAMES: [&str; 3] = ["train", "validation", "test"];

/// Rows into shuffled JSONL splits.
pub fn split_jsonl(rows: Vec<Row>) -> Vec<SplitFile> {
    let parts = split(rows, 0);
    SPLIT_NAMES
        .iter()
        .zip(parts)
        .map(|(name, rows)| (*name, to_jsonl(&rows), rows.len()))
        .collect()
}

pub fn to_jsonl(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        // Serialising a struct of two strings cannot fail.
        out.push_str(&serde_json::to_string(row).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// The UCI sentences as shipped by the `sentiment` package: a JSON array of
/// `{"text": ..., "class": 0 | 1 | null}`; the `null` record is a terminator and is dropped.
pub fn uci_sentences(name: &str, bytes: &[u8]) -> anyhow::Result<Vec<Row>> {
    #[derive(serde::Deserialize)]
    struct Record {
        text: String,
        class: Option<u8>,
    }
    let records: Vec<Record> = serde_json::from_slice(bytes)
        .with_context(|| format!("{name}: not the expected JSON array"))?;
    let mut rows = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        let label = match r.class {
            None => continue,
            Some(0) => "negative",
            Some(1) => "positive",
            Some(c) => bail!("{name}: record {i} has class {c}, expected 0 or 1"),
        };
        let text = r.text.trim().to_string();
        if !text.is_empty() {
            rows.push(Row {
                text,
                label: label.to_string(),
            });
        }
    }
    Ok(rows)
}

/// Body of a raw email: everything after the header block, HTML tags dropped, whitespace
/// collapsed, at most `max_chars` characters.
pub fn email_body(raw: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let body = text.split_once("\n\n").map(|(_, b)| b).unwrap_or("");
    let mut out = String::new();
    let mut in_tag = false;
    let mut last_space = true;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if in_tag => {}
            c if c.is_whitespace() => {
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            c => {
                out.push(c);
                last_space = false;
            }
        }
        if out.chars().count() >= max_chars {
            break;
        }
    }
    out.trim().to_string()
}

/// SpamAssassin mails from `package/data/<folder>/<n>.<md5>.txt`.
pub fn spam_emails(files: &[(String, Vec<u8>)]) -> Vec<Row> {
    files
        .iter()
        .filter_map(|(path, bytes)| {
            let folder = path.strip_prefix("package/data/")?.split('/').next()?;
            let label = if folder.starts_with("spam") {
                "spam"
            } else {
                "ham"
            };
            let text = email_body(bytes, 2000);
            (!text.is_empty()).then(|| Row {
                text,
                label: label.to_string(),
            })
        })
        .collect()
}

/// CoNLL `token<TAB>tag` sentences separated by blank lines.
pub type Sentence = Vec<(String, String)>;

pub fn parse_conll(name: &str, bytes: &[u8]) -> anyhow::Result<Vec<Sentence>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{name}: not UTF-8"))?;
    let mut sentences = Vec::new();
    let mut current = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !current.is_empty() {
                sentences.push(std::mem::take(&mut current));
            }
            continue;
        }
        let mut fields = line.split('\t');
        match (fields.next(), fields.next(), fields.next()) {
            (Some(token), Some(tag), None) if !token.is_empty() && !tag.is_empty() => {
                current.push((token.to_string(), tag.trim().to_string()));
            }
            _ => bail!("{name}:{}: expected `token<TAB>tag`, got {line:?}", i + 1),
        }
    }
    if !current.is_empty() {
        sentences.push(current);
    }
    Ok(sentences)
}

/// The BIO label set: `O`, then `B-t`, `I-t` for each entity type `t` in sorted order.
pub fn bio_labels(sentences: &[Sentence]) -> anyhow::Result<Vec<String>> {
    let mut types = std::collections::BTreeSet::new();
    for (token, tag) in sentences.iter().flatten() {
        if tag == "O" {
            continue;
        }
        match tag.split_once('-') {
            Some(("B" | "I", t)) if !t.is_empty() => {
                types.insert(t.to_string());
            }
            _ => bail!("tag {tag:?} on token {token:?} is not O, B-<type> or I-<type>"),
        }
    }
    let mut labels = vec!["O".to_string()];
    for t in types {
        labels.push(format!("B-{t}"));
        labels.push(format!("I-{t}"));
    }
    Ok(labels)
}

pub fn to_conll(sentences: &[Sentence]) -> String {
    let mut out = String::new();
    for s in sentences {
        for (token, tag) in s {
            out.push_str(token);
            out.push('\t');
            out.push_str(tag);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

pub fn conll_splits(name: &str, bytes: &[u8]) -> anyhow::Result<(Vec<String>, Vec<SplitFile>)> {
    let sentences = parse_conll(name, bytes)?;
    let labels = bio_labels(&sentences)?;
    let parts = split(sentences, 0)
        .into_iter()
        .zip(SPLIT_NAMES)
        .map(|(s, name)| (name, to_conll(&s), s.len()))
        .collect();
    Ok((labels, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_the_published_sequence() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn splits_are_deterministic_disjoint_and_complete() {
        let items: Vec<u32> = (0..1003).collect();
        let a = split(items.clone(), 7);
        let b = split(items.clone(), 7);
        assert_eq!(a, b);
        assert_eq!([a[0].len(), a[1].len(), a[2].len()], [803, 100, 100]);
        let mut all: Vec<u32> = a.concat();
        all.sort();
        assert_eq!(all, items);
        assert_ne!(split(items, 8)[1], a[1], "the salt changes the split");
    }

    #[test]
    fn tiny_inputs_split_without_panicking() {
        assert_eq!(split_sizes(0), (0, 0, 0));
        assert_eq!(split_sizes(2), (2, 0, 0));
        assert_eq!(split_sizes(3), (1, 1, 1));
        assert_eq!(split_sizes(6), (4, 1, 1));
    }

    #[test]
    fn uci_drops_the_null_terminator_and_rejects_odd_classes() {
        let rows = uci_sentences(
            "a.json",
            br#"[{"text":"Good.","class":1},{"text":" Bad ","class":0},{"text":"","class":null}]"#,
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                Row {
                    text: "Good.".into(),
                    label: "positive".into()
                },
                Row {
                    text: "Bad".into(),
                    label: "negative".into()
                },
            ]
        );
        let err = uci_sentences("a.json", br#"[{"text":"x","class":2}]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.json: record 0 has class 2"), "{err}");
    }

    #[test]
    fn email_headers_and_html_are_stripped() {
        let raw = b"From: a@b\r\nSubject: hi\r\n\r\n<html><b>Buy</b>   now!\n\n<p>cheap</p></html>";
        assert_eq!(email_body(raw, 2000), "Buy now! cheap");
        assert_eq!(email_body(b"Subject: only headers\n", 2000), "");
        assert_eq!(email_body(b"h: x\n\nabcdef", 3), "abc");
    }

    #[test]
    fn conll_round_trips_and_names_bad_lines() {
        let text = "Empire\tB-facility\nState\tI-facility\nis\tO\n\nHi\tO\n";
        let s = parse_conll("n.txt", text.as_bytes()).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(to_conll(&s), format!("{text}\n"));
        assert_eq!(
            bio_labels(&s).unwrap(),
            vec!["O", "B-facility", "I-facility"]
        );
        let err = parse_conll("n.txt", b"a\tO\nbroken line\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.txt:2: expected"), "{err}");
        let err = bio_labels(&[vec![("x".into(), "X-foo".into())]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("X-foo"), "{err}");
    }
}
