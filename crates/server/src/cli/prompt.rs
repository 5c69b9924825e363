//! Reading passwords: lines of standard input, or the terminal with echo turned off.
//!
//! Echo is switched with `stty` on `/dev/tty` (the crate forbids `unsafe`, and no dependency is
//! worth one prompt), and restored from the saved settings even when reading fails.
//!
//! Invariants:
//! - Prompts go to the terminal, never to stdout, which stays clean for `--json`.
//! - Only the line ending is removed from what is read: a password's own spaces are kept.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};

/// Lines read from standard input, one per secret, in order.
pub struct StdinLines {
    lines: std::io::Lines<std::io::StdinLock<'static>>,
}

impl StdinLines {
    pub fn new() -> StdinLines {
        StdinLines {
            lines: std::io::stdin().lock().lines(),
        }
    }

    /// The next line, which must not be empty.
    pub fn next(&mut self, what: &str) -> anyhow::Result<String> {
        match self.lines.next() {
            Some(line) => {
                let line = line.context("reading standard input")?;
                let line = line.strip_suffix('\r').unwrap_or(&line).to_owned();
                if line.is_empty() {
                    bail!("the {what} read from standard input is empty");
                }
                Ok(line)
            }
            None => bail!("expected the {what} on standard input, one per line, but it ended"),
        }
    }
}

/// Whether standard input is a terminal (so a person can be asked).
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

fn terminal() -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| anyhow!("no terminal to ask on"))
}

fn stty(tty: &File, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("stty")
        .args(args)
        .stdin(tty.try_clone()?)
        .stderr(Stdio::null())
        .output()
        .context("running stty")?;
    if !output.status.success() {
        bail!("stty {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn read_line(tty: &File) -> anyhow::Result<String> {
    let mut line = String::new();
    BufReader::new(tty)
        .read_line(&mut line)
        .context("reading the terminal")?;
    if line.is_empty() {
        bail!("the terminal closed");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Asks on the terminal and reads an answer that is shown as typed.
pub fn ask(prompt: &str) -> anyhow::Result<String> {
    let mut tty = terminal()?;
    tty.write_all(prompt.as_bytes())?;
    tty.flush()?;
    read_line(&tty)
}

/// Asks on the terminal and reads an answer that is not shown.
pub fn ask_hidden(prompt: &str) -> anyhow::Result<String> {
    let mut tty = terminal()?;
    let saved = stty(&tty, &["-g"]).context("cannot turn off the terminal's echo")?;
    stty(&tty, &["-echo"]).context("cannot turn off the terminal's echo")?;
    let answer = (|| {
        tty.write_all(prompt.as_bytes())?;
        tty.flush()?;
        read_line(&tty)
    })();
    let restored = stty(&tty, &[&saved]);
    // The newline the user typed was not echoed.
    let _ = tty.write_all(b"\n");
    restored.context("cannot restore the terminal's echo; run `stty sane`")?;
    answer
}

/// Asks for a new password twice on the terminal.
pub fn ask_new_password(prompt: &str) -> anyhow::Result<String> {
    let first = ask_hidden(prompt)?;
    let second = ask_hidden("Repeat it: ")?;
    if first != second {
        bail!("the two passwords differ");
    }
    if first.is_empty() {
        bail!("the password is empty");
    }
    Ok(first)
}
