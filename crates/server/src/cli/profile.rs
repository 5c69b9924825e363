//! The stored login: which registry, as whom, with which refresh token and CA file.
//!
//! It lives at `$BULWARK_CLI_CONFIG`, else `$XDG_CONFIG_HOME/bulwark/cli.json`, else
//! `~/.config/bulwark/cli.json`.
//!
//! Invariants:
//! - The file holds a refresh token, never a password, and is written with mode 0600 (its
//!   folder, when created here, 0700), through a temporary file renamed over the old one, so a
//!   crash never leaves half a login behind.
//! - `Debug` of a profile never prints the token.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Profile {
    /// The registry's base URL, `https://host:port`, without a trailing slash.
    pub url: String,
    /// The token service's `service` name.
    pub service: String,
    pub username: String,
    pub refresh_token: String,
    /// The CA file given at login, as an absolute path; `None` trusts the system's roots.
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("url", &self.url)
            .field("service", &self.service)
            .field("username", &self.username)
            .field("refresh_token", &"<redacted>")
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

fn non_empty(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

/// Where the login is stored.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(path) = non_empty("BULWARK_CLI_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    // The XDG spec says a relative XDG_CONFIG_HOME is invalid and is to be ignored.
    if let Some(config) = non_empty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
    {
        return Ok(config.join("bulwark/cli.json"));
    }
    match non_empty("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".config/bulwark/cli.json")),
        None => bail!("cannot tell where to store the login: set BULWARK_CLI_CONFIG or HOME"),
    }
}

/// The stored login, if there is one.
pub fn load(path: &Path) -> anyhow::Result<Option<Profile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(err).with_context(|| format!("reading the stored login {}", path.display()))
        }
    };
    if let Ok(metadata) = std::fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: {} is readable by other users; it holds a login token: chmod 600 it",
                path.display()
            );
        }
    }
    serde_json::from_str(&text).map(Some).with_context(|| {
        format!(
            "{} is not a bulwark login file; delete it and log in again",
            path.display()
        )
    })
}

/// Stores `profile` at `path`, replacing any previous login.
pub fn save(path: &Path, profile: &Profile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    // The mode applies only when the file is created: never reuse a stray temporary file.
    let _ = std::fs::remove_file(&temporary);
    let text = serde_json::to_string_pretty(profile).context("encoding the login")?;
    let written = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(err).with_context(|| format!("writing the login to {}", path.display()));
    }
    Ok(())
}

/// Deletes the stored login; `false` if there was none.
pub fn remove(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("deleting {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            url: "https://registry.test:5000".into(),
            service: "bulwark".into(),
            username: "alice".into(),
            refresh_token: "eyJ.secret.token".into(),
            ca_cert: Some(PathBuf::from("/etc/bulwark/ca.crt")),
        }
    }

    #[test]
    fn a_saved_login_reads_back_and_only_its_owner_can_read_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/bulwark/cli.json");
        save(&path, &profile()).expect("save");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("parent"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let loaded = load(&path).expect("load").expect("a login");
        assert_eq!(loaded.refresh_token, "eyJ.secret.token");
        assert_eq!(loaded.ca_cert, profile().ca_cert);

        // Replacing a login that someone loosened makes it private again.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        save(&path, &profile()).expect("save again");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        assert!(remove(&path).expect("remove"));
        assert!(!remove(&path).expect("remove twice"));
        assert!(load(&path).expect("load").is_none());
    }

    #[test]
    fn debug_hides_the_token() {
        let printed = format!("{:?}", profile());
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("alice"), "{printed}");
    }
}
