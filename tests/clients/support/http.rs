//! Plain HTTPS requests to a server under test, for checking what clients did (digests,
//! statuses, bytes) and for driving the protocol where no client can (an upload interrupted
//! by a crash, a request in flight during SIGTERM).
//!
//! Invariant: a client here trusts exactly the certificates it is given, never the system's
//! roots, so a request that succeeds proves the server presented that chain.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;

use super::server::Server;

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
}

impl Http {
    /// Talks to `server` as `https://localhost:PORT`, trusting the CA it generated.
    pub fn new(server: &Server) -> Http {
        Http::trusting(&format!("https://{}", server.host()), &server.ca_pem())
    }

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
        }
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
        let mut request = self.client.request(method, self.url(path));
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

    /// `GET /v2/<repository>/manifests/<reference>`, accepting every manifest type.
    pub fn manifest(&self, repository: &str, reference: &str) -> Reply {
        self.send(
            Method::GET,
            &format!("/v2/{repository}/manifests/{reference}"),
            &[("accept", MANIFEST_ACCEPT)],
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
