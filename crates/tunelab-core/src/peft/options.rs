//! A method's options as people set them: CLI flags, the web form's fields and shared links
//! read them as text; each is one serde field of the method's config.

/// One option of a method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Opt {
    /// The serde field of the method's config (`r`).
    pub key: &'static str,
    /// The CLI flag without dashes (`lora-r`); also the form field's test id.
    pub flag: &'static str,
    /// The web form's and shared links' key (`r`).
    pub url: &'static str,
    /// What the form calls it (`rank r`); errors start with it.
    pub label: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    pub kind: OptKind,
}

/// What an option's text must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptKind {
    /// A whole number in `min..=max`.
    Whole { min: u64, max: u64 },
    /// A finite number from `min` (excluded when `min_open`) up to `max`, excluded
    /// (`f64::INFINITY` for no bound).
    Real { min: f64, min_open: bool, max: f64 },
    /// Comma-separated names, at least one.
    Names,
}

impl Opt {
    /// The JSON value of `text`, or what was expected. `bounded`: within the option's range
    /// (the web form, whose shared links must not ask a tab for more than it holds);
    /// otherwise any number of the right kind, left to the method's own checks (the CLI).
    pub fn parse(&self, text: &str, bounded: bool) -> Result<serde_json::Value, String> {
        let t = text.trim();
        let label = self.label;
        match self.kind {
            OptKind::Whole { .. } if !bounded => t
                .parse::<u64>()
                .map(Into::into)
                .map_err(|_| format!("{label} `{t}`: expected a whole number")),
            OptKind::Real { .. } if !bounded => match t.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x.into()),
                _ => Err(format!("{label} `{t}`: expected a finite number")),
            },
            OptKind::Whole { min, max } => match t.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n.into()),
                _ if max == u64::MAX => Err(format!(
                    "{label} `{t}`: expected a whole number of at least {min}"
                )),
                _ => Err(format!(
                    "{label} `{t}`: expected a whole number from {min} to {max}"
                )),
            },
            OptKind::Real { min, min_open, max } => {
                let ok = |x: f64| (x > min || (!min_open && x == min)) && x < max;
                match t.parse::<f64>() {
                    Ok(x) if x.is_finite() && ok(x) => Ok(x.into()),
                    _ if min == 0.0 && min_open && max.is_infinite() => Err(format!(
                        "{label} `{t}`: expected a positive number such as 16"
                    )),
                    _ if max.is_infinite() => Err(format!(
                        "{label} `{t}`: expected a number of at least {min}"
                    )),
                    _ => Err(format!(
                        "{label} `{t}`: expected a number from {min} up to (not including) {max}"
                    )),
                }
            }
            OptKind::Names => {
                let names: Vec<serde_json::Value> = t
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(|n| n.to_string().into())
                    .collect();
                if names.is_empty() {
                    return Err(format!(
                        "{label} `{t}`: expected one or more layer names, comma-separated"
                    ));
                }
                Ok(names.into())
            }
        }
    }

    /// A JSON value of this option as the text [`Opt::parse`] reads.
    pub fn format(&self, v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|n| n.as_str().map_or_else(|| n.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => match n.as_f64() {
                // f32 options are written back as the f32 they are (16, not 16.0).
                Some(x) if n.as_u64().is_none() => format!("{}", x as f32),
                _ => n.to_string(),
            },
            other => other.to_string(),
        }
    }
}
