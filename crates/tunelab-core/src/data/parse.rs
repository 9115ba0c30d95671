//! Parsers for the four formats. Line numbers are 1-based and name the line a row starts on.

use super::{DataError, Example, Format, ParseOptions, Parsed};

/// Parses `text` (the contents of `file`) in `format`.
pub fn parse(
    file: &str,
    text: &str,
    format: Format,
    opts: &ParseOptions,
) -> Result<Parsed, DataError> {
    let mut out = Parsed::default();
    // A byte-order mark (as some editors write) is not part of the first row.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(DataError::File {
            file: file.into(),
            reason: "the file is empty".into(),
        });
    }
    let row = |r: Result<Example, DataError>, out: &mut Parsed| -> Result<(), DataError> {
        match r {
            Ok(e) => out.examples.push(e),
            Err(e) if opts.skip_bad && matches!(e, DataError::Row { .. }) => out.skipped.push(e),
            Err(e) => return Err(e),
        }
        Ok(())
    };
    match format {
        Format::Jsonl => {
            // Labels must be all strings or all numbers/booleans: `1` beside `"positive"` is
            // a mistake that would silently make a class of its own.
            let mut first_label: Option<(usize, bool, String)> = None;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let r = jsonl_row(file, i + 1, line, opts).and_then(|(e, quoted)| {
                    let Example::Text {
                        label: Some(l), ..
                    } = &e
                    else {
                        return Ok(e);
                    };
                    match &first_label {
                        None => first_label = Some((i + 1, quoted, l.clone())),
                        Some((at, was_quoted, first)) if *was_quoted != quoted => {
                            let kind = |q: bool| if q { "a string" } else { "a number or boolean" };
                            return Err(DataError::Row {
                                file: file.into(),
                                line: i + 1,
                                reason: format!(
                                    "label {} is {} but line {at}'s label {} is {}; write every label the same way",
                                    if quoted { format!("\"{l}\"") } else { l.clone() },
                                    kind(quoted),
                                    if *was_quoted { format!("\"{first}\"") } else { first.clone() },
                                    kind(*was_quoted)
                                ),
                            });
                        }
                        Some(_) => {}
                    }
                    Ok(e)
                });
                row(r, &mut out)?;
            }
        }
        Format::Csv => csv_rows(file, text, opts, &mut |r, out| row(r, out), &mut out)?,
        Format::Conll => {
            let mut words = Vec::new();
            let mut tags = Vec::new();
            let mut start = 0;
            let mut bad: Option<DataError> = None;
            // Every token line has as many columns as the first (token ... tag); a line with
            // more or fewer is a token with a space in it or a missing column.
            let mut width: Option<(usize, usize)> = None;
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let t = line.trim();
                let end_of_sentence = t.is_empty();
                if !end_of_sentence && !t.starts_with("-DOCSTART-") {
                    if words.is_empty() && bad.is_none() {
                        start = i + 1;
                    }
                    let cols: Vec<&str> = t.split_whitespace().collect();
                    if cols.len() < 2 {
                        bad.get_or_insert(DataError::Row {
                            file: file.into(),
                            line: i + 1,
                            reason: format!(
                                "expected a token and a tag separated by a tab or space, found `{t}`"
                            ),
                        });
                    } else if let Some((w, at)) = width.filter(|(w, _)| *w != cols.len()) {
                        bad.get_or_insert(DataError::Row {
                            file: file.into(),
                            line: i + 1,
                            reason: format!(
                                "expected {w} columns like line {at}, found {} in `{t}`",
                                cols.len()
                            ),
                        });
                    } else {
                        width.get_or_insert((cols.len(), i + 1));
                        words.push(cols[0].to_string());
                        tags.push(cols[cols.len() - 1].to_string());
                    }
                }
                if end_of_sentence || i + 1 == lines.len() {
                    if let Some(e) = bad.take() {
                        words.clear();
                        tags.clear();
                        row(Err(e), &mut out)?;
                    } else if !words.is_empty() {
                        row(
                            Ok(Example::Tagged {
                                line: start,
                                words: std::mem::take(&mut words),
                                tags: std::mem::take(&mut tags),
                            }),
                            &mut out,
                        )?;
                    }
                }
            }
        }
        Format::Text => {
            for (i, line) in text.lines().enumerate() {
                let t = line.trim();
                if !t.is_empty() {
                    out.examples.push(Example::Text {
                        line: i + 1,
                        text: t.to_string(),
                        label: None,
                    });
                }
            }
        }
    }
    if out.examples.is_empty() && out.skipped.is_empty() {
        return Err(DataError::File {
            file: file.into(),
            reason: format!("no examples found (read as {format:?})"),
        });
    }
    Ok(out)
}

/// One JSONL row, and whether its label was a JSON string.
fn jsonl_row(
    file: &str,
    line: usize,
    text: &str,
    opts: &ParseOptions,
) -> Result<(Example, bool), DataError> {
    let err = |reason: String| DataError::Row {
        file: file.into(),
        line,
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| err("expected a JSON object per line".into()))?;
    if let Some(tokens) = obj.get(&opts.tokens_field) {
        let strings = |v: &serde_json::Value, field: &str| -> Result<Vec<String>, DataError> {
            v.as_array()
                .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
                .ok_or_else(|| err(format!("field `{field}` must be an array of strings")))
        };
        let words = strings(tokens, &opts.tokens_field)?;
        let tags = match obj.get(&opts.tags_field) {
            Some(t) => strings(t, &opts.tags_field)?,
            None => Vec::new(),
        };
        if !tags.is_empty() && tags.len() != words.len() {
            return Err(err(format!(
                "{} tokens but {} tags",
                words.len(),
                tags.len()
            )));
        }
        return Ok((Example::Tagged { line, words, tags }, true));
    }
    let text = obj
        .get(&opts.text_field)
        .and_then(|t| t.as_str())
        .ok_or_else(|| {
            err(format!(
                "expected a string field `{}` (or `{}` for token classification)",
                opts.text_field, opts.tokens_field
            ))
        })?;
    let (label, quoted) = match obj.get(&opts.label_field) {
        None | Some(serde_json::Value::Null) => (None, true),
        Some(serde_json::Value::String(s)) => (Some(s.clone()), true),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            (Some(v.to_string()), false)
        }
        Some(_) => {
            return Err(err(format!(
                "field `{}` must be a string, number or boolean",
                opts.label_field
            )));
        }
    };
    Ok((
        Example::Text {
            line,
            text: text.to_string(),
            label,
        },
        quoted,
    ))
}

type RowSink<'a> = dyn FnMut(Result<Example, DataError>, &mut Parsed) -> Result<(), DataError> + 'a;

fn csv_rows(
    file: &str,
    text: &str,
    opts: &ParseOptions,
    row: &mut RowSink<'_>,
    out: &mut Parsed,
) -> Result<(), DataError> {
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = rd
        .headers()
        .map_err(|e| DataError::File {
            file: file.into(),
            reason: format!("cannot read the header row: {e}"),
        })?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let text_col = col(&opts.text_field).ok_or_else(|| DataError::File {
        file: file.into(),
        reason: format!(
            "no column `{}` in the header; the columns are {:?}",
            opts.text_field,
            headers.iter().collect::<Vec<_>>()
        ),
    })?;
    let label_col = col(&opts.label_field);
    let width = headers.len();
    let mut record = csv::StringRecord::new();
    loop {
        let line_hint = rd.position().line() as usize;
        match rd.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record
                    .position()
                    .map(|p| p.line() as usize)
                    .unwrap_or(line_hint);
                // Lines this row's quoted fields run over beyond its first.
                let spans = record
                    .iter()
                    .map(|f| f.matches('\n').count())
                    .sum::<usize>();
                let r = if record.len() != width && spans > 0 {
                    Err(DataError::Row {
                        file: file.into(),
                        line,
                        reason: format!(
                            "a quote opened here is unbalanced: lines {line}-{} were read as one row of {} fields (expected {width} like the header)",
                            line + spans,
                            record.len()
                        ),
                    })
                } else if record.len() != width {
                    Err(DataError::Row {
                        file: file.into(),
                        line,
                        reason: format!(
                            "expected {width} fields like the header, found {}",
                            record.len()
                        ),
                    })
                } else {
                    if spans > 0 {
                        out.warnings.push(format!(
                            "{file}:{line}: a quoted field runs over {} lines (to line {}); if a quote is unbalanced, the rows inside it were read as part of this one",
                            spans + 1,
                            line + spans
                        ));
                    }
                    let label = label_col
                        .map(|c| record[c].trim().to_string())
                        .filter(|l| !l.is_empty());
                    Ok(Example::Text {
                        line,
                        text: record[text_col].to_string(),
                        label,
                    })
                };
                row(r, out)?;
            }
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(line_hint);
                let r = Err(DataError::Row {
                    file: file.into(),
                    line,
                    reason: format!("malformed CSV: {}", e.kind_message()),
                });
                row(r, out)?;
                if !opts.skip_bad {
                    break;
                }
            }
        }
    }
    Ok(())
}

trait KindMessage {
    fn kind_message(&self) -> String;
}

impl KindMessage for csv::Error {
    fn kind_message(&self) -> String {
        match self.kind() {
            csv::ErrorKind::Utf8 { .. } => "a field is not valid UTF-8".into(),
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("expected {expected_len} fields, found {len}"),
            _ => self.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ParseOptions {
        ParseOptions::default()
    }

    #[test]
    fn jsonl_text_and_labels() {
        let p = parse(
            "d.jsonl",
            "{\"text\":\"good\",\"label\":1}\n\n{\"text\":\"bad\",\"label\":0}\n",
            Format::Jsonl,
            &opts(),
        )
        .unwrap();
        assert_eq!(p.examples.len(), 2);
        assert_eq!(
            p.examples[1],
            Example::Text {
                line: 3,
                text: "bad".into(),
                label: Some("0".into())
            }
        );
    }

    #[test]
    fn jsonl_bad_row_names_line_or_is_skipped() {
        let text = "{\"text\":\"a\",\"label\":\"x\"}\n{\"txt\":\"b\"}\nnot json\n";
        let e = parse("d.jsonl", text, Format::Jsonl, &opts()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("d.jsonl:2: expected a string field `text`"),
            "{e}"
        );
        let p = parse(
            "d.jsonl",
            text,
            Format::Jsonl,
            &ParseOptions {
                skip_bad: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(p.examples.len(), 1);
        let lines: Vec<String> = p.skipped.iter().map(|e| e.to_string()).collect();
        assert!(lines[0].starts_with("d.jsonl:2:"), "{lines:?}");
        assert!(
            lines[1].starts_with("d.jsonl:3: not valid JSON"),
            "{lines:?}"
        );
    }

    #[test]
    fn csv_quoted_fields_and_columns() {
        let text = "id,sentence,label\n1,\"Hello, world\",pos\n2,\"multi\nline \"\"quoted\"\"\",neg\n3,plain,pos\n";
        let p = parse(
            "d.csv",
            text,
            Format::Csv,
            &ParseOptions {
                text_field: "sentence".into(),
                ..opts()
            },
        )
        .unwrap();
        let got: Vec<(usize, String, Option<String>)> = p
            .examples
            .iter()
            .map(|e| match e {
                Example::Text { line, text, label } => (*line, text.clone(), label.clone()),
                Example::Tagged { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "Hello, world".into(), Some("pos".into())),
                (3, "multi\nline \"quoted\"".into(), Some("neg".into())),
                (5, "plain".into(), Some("pos".into())),
            ]
        );
    }

    #[test]
    fn csv_errors_name_line_and_column() {
        let e = parse("d.csv", "text,label\na,b,c\n", Format::Csv, &opts()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.csv:2: expected 2 fields like the header, found 3"
        );
        let e = parse("d.csv", "body,label\na,b\n", Format::Csv, &opts()).unwrap_err();
        assert!(
            e.to_string()
                .contains("no column `text` in the header; the columns are [\"body\", \"label\"]"),
            "{e}"
        );
    }

    #[test]
    fn conll_sentences_tags_and_errors() {
        let text = "-DOCSTART- O\n\nJohn\tB-PER\nlives O\nhere\tO\n\nParis B-LOC\n";
        let p = parse("d.conll", text, Format::Conll, &opts()).unwrap();
        assert_eq!(
            p.examples,
            vec![
                Example::Tagged {
                    line: 3,
                    words: vec!["John".into(), "lives".into(), "here".into()],
                    tags: vec!["B-PER".into(), "O".into(), "O".into()]
                },
                Example::Tagged {
                    line: 7,
                    words: vec!["Paris".into()],
                    tags: vec!["B-LOC".into()]
                }
            ]
        );
        let e = parse("d.conll", "a O\nb\n\nc O\n", Format::Conll, &opts()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("d.conll:2: expected a token and a tag"),
            "{e}"
        );
    }

    #[test]
    fn text_lines_and_empty_files() {
        let p = parse("t.txt", "one\n\n  two  \n", Format::Text, &opts()).unwrap();
        assert_eq!(p.examples.len(), 2);
        assert_eq!(p.examples[1].line(), 3);
        let e = parse("t.txt", "\n\n", Format::Text, &opts()).unwrap_err();
        assert_eq!(e.to_string(), "t.txt: the file is empty");
        let e = parse("d.jsonl", "-DOCSTART- O\n", Format::Conll, &opts()).unwrap_err();
        assert!(e.to_string().contains("no examples"), "{e}");
    }

    #[test]
    fn jsonl_labels_written_two_ways_name_the_line() {
        let text = "{\"text\":\"a\",\"label\":\"positive\"}\n{\"text\":\"b\",\"label\":1}\n";
        let e = parse("d.jsonl", text, Format::Jsonl, &opts()).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "d.jsonl:2: label 1 is a number or boolean but line 1's label \"positive\" is a string"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_row() {
        let p = parse(
            "d.jsonl",
            "\u{feff}{\"text\":\"a\",\"label\":\"x\"}\n",
            Format::Jsonl,
            &opts(),
        )
        .unwrap();
        assert_eq!(p.examples.len(), 1);
        let t = super::super::decode_text("d.csv", b"\xEF\xBB\xBFtext,label\n").unwrap();
        assert_eq!(t, "text,label\n");
    }

    #[test]
    fn bytes_that_are_not_utf8_name_line_and_byte() {
        let e =
            super::super::decode_text("d.csv", b"text,label\nfine,a\nbad \xff,b\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.csv:3: byte 5 of this line is not UTF-8 text (byte 0xff); save the file as UTF-8"
        );
    }

    #[test]
    fn conll_lines_with_another_column_count_are_refused() {
        let e = parse(
            "d.conll",
            "John B-PER\nNew York B-LOC\n",
            Format::Conll,
            &opts(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.conll:2: expected 2 columns like line 1, found 3 in `New York B-LOC`"
        );
        // Four columns throughout (CoNLL-2003) are fine: the tag is the last.
        let p = parse(
            "d.conll",
            "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n",
            Format::Conll,
            &opts(),
        )
        .unwrap();
        assert!(matches!(&p.examples[0], Example::Tagged { tags, .. } if tags == &["B-ORG", "O"]));
    }

    #[test]
    fn an_unbalanced_csv_quote_is_reported_with_its_lines() {
        // The quote on line 2 closes on line 4: the rows between are swallowed.
        let text = "text,label\n\"oops,pos\nrow two,neg\nrow three\",neg\nlast,pos\n";
        let p = parse("d.csv", text, Format::Csv, &opts()).unwrap();
        assert_eq!(p.examples.len(), 2);
        assert_eq!(
            p.warnings,
            vec![
                "d.csv:2: a quoted field runs over 3 lines (to line 4); if a quote is unbalanced, the rows inside it were read as part of this one"
                    .to_string()
            ]
        );
        // Never closed: the rest of the file is one field.
        let e = parse(
            "d.csv",
            "text,label\nfine,pos\n\"oops,pos\nmore,neg\n",
            Format::Csv,
            &opts(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("d.csv:3: a quote opened here is unbalanced: lines 3-5"),
            "{e}"
        );
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::from_path("a/train.JSONL"), Some(Format::Jsonl));
        assert_eq!(Format::from_path("x.conll"), Some(Format::Conll));
        assert_eq!(Format::from_path("x.parquet"), None);
    }
}
