//! The PEFT methods' options as `tunelab train` flags, made from the registry
//! ([`tunelab_core::peft::REGISTRY`]): each option's flag, help and value name come from the
//! method that owns it, so a new method's options appear here without CLI code.

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use tunelab_core::peft::{Method, OptKind, REGISTRY};

/// The method-option flags given, in registry order: `(flag, text)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodArgs {
    pub given: Vec<(&'static str, String)>,
}

impl FromArgMatches for MethodArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut s = Self::default();
        s.update_from_arg_matches(m)?;
        Ok(s)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for opt in REGISTRY.iter().flat_map(|i| i.options) {
            if let Some(v) = m.get_one::<String>(opt.flag) {
                self.given.retain(|(f, _)| *f != opt.flag);
                self.given.push((opt.flag, v.clone()));
            }
        }
        Ok(())
    }
}

impl Args for MethodArgs {
    fn augment_args(mut cmd: Command) -> Command {
        for opt in REGISTRY.iter().flat_map(|i| i.options) {
            let value_name = match opt.kind {
                OptKind::Whole { .. } => "N",
                OptKind::Real { .. } => "X",
                OptKind::Names => "NAMES",
            };
            cmd = cmd.arg(
                Arg::new(opt.flag)
                    .long(opt.flag)
                    .help(opt.help)
                    .value_name(value_name)
                    .allow_negative_numbers(true)
                    .help_heading("Method"),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl MethodArgs {
    /// Applies the flags to `method`; a flag of another method than the chosen one is an
    /// error naming both.
    pub fn apply(&self, method: &mut Method) -> anyhow::Result<()> {
        for (flag, text) in &self.given {
            let Some((info, opt)) = Method::option(flag) else {
                continue;
            };
            if method.name() != info.name {
                anyhow::bail!("--{flag} needs --method {}", info.name);
            }
            method
                .set_unchecked(opt, text)
                .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
        }
        Ok(())
    }
}

/// `--method`'s help: every registered method.
pub fn method_help() -> String {
    let names: Vec<String> = REGISTRY
        .iter()
        .map(|i| format!("{} ({})", i.name, i.summary))
        .collect();
    format!("The PEFT method: {}. [default: lora]", names.join("; "))
}

/// `--lr`'s help: the methods' default learning rates.
pub fn lr_help() -> String {
    let by: Vec<String> = REGISTRY
        .iter()
        .map(|i| format!("{} {:e}", i.name, i.lr))
        .collect();
    format!(
        "Peak AdamW learning rate. [default: by method: {}]",
        by.join(", ")
    )
}
