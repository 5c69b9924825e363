//! Plain HTTPS requests to a server under test, for checking what clients did (digests,
//! statuses, bytes) and for driving the protocol where no client can (an upload interrupted
//! by a crash, a request in flight during SIGTERM).
//!
//! Invariants:
//! - A client here trusts exactly the certificates it is given, never the system's roots, so a
//!   request that succeeds proves the server presented that chain.
//! - `Http::new` acts as the server's admin (Basic credentials on every request); every other
//!   constructor is anonymous until given credentials (`with_auth`).

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;

use super::server::{Server, ADMIN_PASSWORD, ADMIN_USER};

/// The credentials an `Http` sends with every request.
#[derive(Debug, Clone)]
pub enum Auth {
    Anonymous,
    Basic { user: String, password: String },
    Bearer(String),
}

impl Auth {
    pub fn basic(user: &str, password: &str) -> Auth {
        Auth::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    pub fn admin() -> Auth {
        Auth::basic(ADMIN_USER, ADMIN_PASSWORD)
    }
}

/// What a test needs of a response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of header `name`; fails the test if it is missing.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
            .to_str()
            .expect("a text header")
    }

    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "the body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Every manifest type a registry may hold, as a pulling client announces them.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A reqwest client that trusts only `ca_pem` (one or more PEM certificates).
pub fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    let certificate = reqwest::Certificate::from_pem(ca_pem).expect("a PEM certificate");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(certificate)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("building an HTTPS client")
}

/// A blocking façade over an async client, with its own runtime, so tests can mix HTTP with
/// `std::process` calls without nesting runtimes.
pub struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
    auth: Auth,
}

impl Http {
    /// Talks to `server` as `https://localhost:PORT` with the admin's credentials, trusting
    /// the CA it generated.
    pub fn new(server: &Server) -> Http {
        Http::anonymous(server).with_auth(Auth::admin())
    }

    /// Talks to `server` without credentials.
    pub fn anonymous(server: &Server) -> Http {
        Http::trusting(&format!("https://{}", server.host()), &server.ca_pem())
    }

    /// Talks to `base` without credentials, trusting only `ca_pem`.
    pub fn trusting(base: &str, ca_pem: &[u8]) -> Http {
        // One worker: tasks spawned here (a slow upload) keep running while the test thread
        // blocks on something else (a signal, a process).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("building a tokio runtime");
        Http {
            runtime,
            client: client_trusting(ca_pem),
            base: base.trim_end_matches('/').to_owned(),
            auth: Auth::Anonymous,
        }
    }

    /// The same client, sending `auth` from now on.
    pub fn with_auth(mut self, auth: Auth) -> Http {
        self.auth = auth;
        self
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` carrying this client's credentials.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match &self.auth {
            Auth::Anonymous => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        }
    }

    /// Sends a request and reads the whole response; a transport error fails the test.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        self.try_send(method.clone(), path, headers, body)
            .unwrap_or_else(|err| panic!("{method} {path}: {err:?}"))
    }

    /// Sends a request and reads the whole response, returning transport errors.
    pub fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, reqwest::Error> {
        let mut request = self.request(method, path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if !body.is_empty() {
            request = request.body(body);
        }
        self.runtime.block_on(async {
            let response = request.send().await?;
            Ok(Reply {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: response.bytes().await?.to_vec(),
            })
        })
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], Vec::new())
    }

    /// Sends `body` as `application/json`.
    pub fn send_json(&self, method: Method, path: &str, body: &serde_json::Value) -> Reply {
        self.send(
            method,
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(body).expect("JSON serializes"),
        )
    }

    /// `GET /v2/<repository>/manifests/<reference>`, accepting every manifest type.
    pub fn manifest(&self, repository: &str, reference: &str) -> Reply {
        self.send(
            Method::GET,
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("accept", MANIFEST_ACCEPT)],
            Vec::new(),
        )
    }

    /// `POST /v2/<repository>/blobs/uploads/`, which must answer 202; returns the session's
    /// path from `Location`.
    pub fn start_upload(&self, repository: &str) -> String {
        let reply = self.send(
            Method::POST,
            &format!("/v2/{repository}/blobs/uploads/"),
            &[],
            Vec::new(),
        );
        assert_eq!(reply.status, 202, "starting an upload: {reply:?}");
        let location = reply.header("location");
        // A Location may be absolute; requests here go to whichever port the server has now.
        match location.find("/v2/") {
            Some(start) => location[start..].to_owned(),
            None => panic!("the upload Location {location:?} is not a /v2/ path"),
        }
    }

    /// `PATCH <location>` with `chunk`, which starts at byte `start` of the blob.
    pub fn patch_upload(&self, location: &str, start: usize, chunk: &[u8]) -> Reply {
        let range = format!("{start}-{}", start + chunk.len() - 1);
        self.send(
            Method::PATCH,
            location,
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", &range),
            ],
            chunk.to_vec(),
        )
    }

    /// `PUT <location>?digest=…` with no body: completes the upload.
    pub fn finish_upload(&self, location: &str, digest: &str) -> Reply {
        let separator = if location.contains('?') { '&' } else { '?' };
        self.send(
            Method::PUT,
            &format!("{location}{separator}digest={digest}"),
            &[],
            Vec::new(),
        )
    }

    /// `GET /v2/<repository>/blobs/<digest>`, which must succeed; returns the bytes.
    pub fn blob(&self, repository: &str, digest: &str) -> Vec<u8> {
        let reply = self.get(&format!("/v2/{repository}/blobs/{digest}"));
        assert_eq!(reply.status, 200, "GET blob {digest} from {repository}");
        reply.body
    }
}
