//! Azurite, Microsoft's Azure Blob Storage emulator (npm's `azurite`, run with Node.js), as a
//! throwaway Azure store: one account of our own (`AZURITE_ACCOUNTS`), one container, path-style
//! URLs (`http://127.0.0.1:<port>/<account>/<container>/<key>`), data on disk in a temporary
//! directory so that `stop` and `resume` keep it.
//!
//! Invariant: the container is created when the server first starts, with a request this module
//! signs itself (Shared Key), because `object_store` offers no way to create one; everything
//! else goes through the blob store under test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use localport::free_port;
use sha2::Digest as _;

use super::{answers_http, find_binary, tail_of, StoreServer};
use crate::{AzureSettings, Backend, RemoteSettings, MIN_PART_SIZE};

pub const AZURE_ACCOUNT: &str = "bulwark";
/// The account's key, base64 as Azure hands keys out (`bulwark-test-azure-account-key!!`).
pub const AZURE_ACCESS_KEY: &str = "YnVsd2Fyay10ZXN0LWF6dXJlLWFjY291bnQta2V5ISE=";
pub const AZURE_CONTAINER: &str = "blobs";

fn azurite() -> PathBuf {
    find_binary("BULWARK_AZURITE", "azurite-blob").unwrap_or_else(|| {
        panic!(
            "no `azurite-blob` binary (Azurite) on PATH or in $BULWARK_AZURITE: these tests run \
             a real Azure Blob Storage emulator; install it with `npm install --prefix DIR \
             azurite@3.37.0` and point $BULWARK_AZURITE at DIR/node_modules/.bin/azurite-blob \
             (tools/check does)"
        )
    })
}

pub struct AzuriteServer {
    child: Option<Child>,
    port: u16,
    prefixes: AtomicU32,
    log: PathBuf,
    // Dropped last, after `Drop::drop` killed the server.
    dir: tempfile::TempDir,
}

impl AzuriteServer {
    /// Starts Azurite, waits until it answers, and creates the container.
    pub fn start() -> AzuriteServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = AzuriteServer {
            child: None,
            port: free_port(),
            prefixes: AtomicU32::new(0),
            log: dir.path().join("azurite.log"),
            dir,
        };
        server.resume();
        server.create_container();
        server
    }

    /// The account's blob endpoint (path-style: the account is the first path segment).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURE_ACCOUNT}", self.port)
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail_of(&self.log, 30)
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = format!("127.0.0.1:{}", self.port);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "azurite exited with {status} before it was ready:\n{}",
                        self.log_tail()
                    );
                }
            }
            if answers_http(&address) {
                return;
            }
            if Instant::now() > deadline {
                panic!("Azurite did not answer within 60 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `PUT /<account>/<container>?restype=container`, signed with the account key.
    fn create_container(&self) {
        let date = http_date(SystemTime::now());
        let version = "2021-12-02";
        // Twelve standard headers, all empty (a zero Content-Length is signed as empty), then
        // the x-ms- headers, then the resource: the account, then the path, which starts with
        // the account again on a path-style endpoint.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{AZURE_CONTAINER}\nrestype:container"
        );
        let engine = base64::engine::general_purpose::STANDARD;
        let key = engine.decode(AZURE_ACCESS_KEY).expect("a base64 key");
        let signature = engine.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let request = format!(
            "PUT /{AZURE_ACCOUNT}/{AZURE_CONTAINER}?restype=container HTTP/1.1\r\n\
             Host: 127.0.0.1:{port}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {AZURE_ACCOUNT}:{signature}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            port = self.port
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to Azurite");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(request.as_bytes())
            .expect("send the request");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "Azurite did not create the container:\n{answer}\n{}",
            self.log_tail()
        );
    }
}

impl StoreServer for AzuriteServer {
    fn settings(&self) -> RemoteSettings {
        let prefix = format!("test-{}", self.prefixes.fetch_add(1, Ordering::Relaxed));
        RemoteSettings {
            backend: Backend::Azure(AzureSettings {
                account: AZURE_ACCOUNT.into(),
                container: AZURE_CONTAINER.into(),
                access_key: Some(AZURE_ACCESS_KEY.into()),
                endpoint: Some(self.endpoint()),
                allow_http: true,
            }),
            prefix: Some(prefix),
            part_size: MIN_PART_SIZE,
        }
    }

    /// Stops Azurite as an outage would, but cleanly: it keeps its metadata in memory and saves
    /// it every few seconds, so a SIGKILL would lose the last writes, which Azure never does.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn resume(&mut self) {
        assert!(self.child.is_none(), "Azurite is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the Azurite log");
        let child = Command::new(azurite())
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(self.dir.path().join("data"))
            // `object_store` speaks a newer service version than Azurite knows of.
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
            // The account is the first path segment, never read from the host name.
            .arg("--disableProductStyleUrl")
            .env(
                "AZURITE_ACCOUNTS",
                format!("{AZURE_ACCOUNT}:{AZURE_ACCESS_KEY}"),
            )
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start azurite-blob");
        self.child = Some(child);
        self.wait_until_ready();
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// HMAC-SHA-256 (RFC 2104) over the one hash this crate already has.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = sha2::Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    sha2::Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// An RFC 9110 date (`Tue, 08 Dec 2026 03:51:44 GMT`).
fn http_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_rfc_says() {
        // RFC 4231, test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            oci::digest::to_hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let long_key = [0xaa; 131];
        let mac = hmac_sha256(
            &long_key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            oci::digest::to_hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn dates_are_http_dates() {
        let at = |secs| http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_796_701_904), "Tue, 08 Dec 2026 03:51:44 GMT");
    }
}
