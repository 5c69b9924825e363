//! A distribution-API client for benchmarks: the requests registry clients make, nothing
//! more, over keep-alive HTTPS connections.
//!
//! Invariants:
//! - It authenticates the way the registry asks on `GET /v2/`: nothing, Basic, or a Bearer
//!   token fetched once from the challenge's realm (Docker's token protocol) and reused for
//!   every request until it nears expiry. Credentials are never printed.
//! - Every answer's status is checked; a benchmark of failing requests is an error, not a
//!   figure.
//! - HTTP/1.1 by default, one connection per request in flight, as docker and podman talk to
//!   registries; HTTP/2 only when asked for.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::payload::Payload;

/// What an OCI image manifest is sent and accepted as.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Where a registry is and how to reach it.
#[derive(Clone)]
pub struct Target {
    /// `https://host:port`, without a trailing slash.
    pub base: String,
    /// The PEM of the CA that signed the registry's certificate.
    pub ca_pem: Vec<u8>,
    pub credentials: Option<Credentials>,
    pub http2: bool,
}

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// How requests are authorized, as learnt from the `/v2/` challenge.
enum Authorization {
    None,
    Basic(HeaderValue),
    Bearer {
        token_url: String,
        header: HeaderValue,
        fetched: Instant,
        lifetime: Duration,
    },
}

/// A registry and the connections to it. Cheap to clone; clones share connections and token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    credentials: Option<Credentials>,
    authorization: Arc<RwLock<Authorization>>,
}

/// Builds the HTTPS client every request of a run goes through.
pub fn http_client(ca_pem: &[u8], http2: bool) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem).context("reading the CA certificate")?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        // Registries answer a pull with 307 only to object-store URLs; follow them like clients.
        .redirect(reqwest::redirect::Policy::limited(3));
    if !http2 {
        builder = builder.http1_only();
    }
    builder.build().context("building the HTTPS client")
}

impl Client {
    /// Connects to the registry and learns how it wants requests authorized; with token auth,
    /// fetches a token for `scopes` (e.g. `repository:bench/push:pull,push`).
    pub async fn connect(target: &Target, scopes: &[String]) -> anyhow::Result<Client> {
        let http = http_client(&target.ca_pem, target.http2)?;
        let client = Client {
            http,
            base: target.base.trim_end_matches('/').to_owned(),
            credentials: target.credentials.clone(),
            authorization: Arc::new(RwLock::new(Authorization::None)),
        };
        let response = client
            .http
            .get(format!("{}/v2/", client.base))
            .send()
            .await
            .with_context(|| format!("GET {}/v2/", client.base))?;
        let authorization = match response.status() {
            status if status.is_success() => Authorization::None,
            StatusCode::UNAUTHORIZED => {
                let challenge = response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                client.authorize(&challenge, scopes).await?
            }
            status => bail!("GET /v2/ answered {status}"),
        };
        *client.authorization.write().expect("not poisoned") = authorization;
        Ok(client)
    }

    async fn authorize(&self, challenge: &str, scopes: &[String]) -> anyhow::Result<Authorization> {
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| anyhow!("GET /v2/ answered 401 without a usable challenge"))?;
        let credentials = self.credentials.as_ref();
        if scheme.eq_ignore_ascii_case("basic") {
            let credentials =
                credentials.ok_or_else(|| anyhow!("the registry wants Basic credentials"))?;
            return Ok(Authorization::Basic(basic_header(credentials)));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            bail!("the registry wants an unknown authorization scheme {scheme:?}");
        }
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| anyhow!("the Bearer challenge names no realm"))?;
        let mut query: Vec<(String, String)> =
            params.into_iter().filter(|(k, _)| k == "service").collect();
        query.extend(scopes.iter().map(|s| ("scope".to_owned(), s.clone())));
        let token_url = reqwest::Url::parse_with_params(&realm, &query)
            .with_context(|| format!("the realm {realm:?} is not a URL"))?
            .to_string();
        self.fetch_token(&token_url).await
    }

    async fn fetch_token(&self, token_url: &str) -> anyhow::Result<Authorization> {
        let mut request = self.http.get(token_url);
        if let Some(credentials) = &self.credentials {
            request = request.header(header::AUTHORIZATION, basic_header(credentials));
        }
        let fetched = Instant::now();
        let response = request.send().await.context("asking for a token")?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "the token service answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let body = response.bytes().await.context("reading the token")?;
        let body: serde_json::Value =
            serde_json::from_slice(&body).context("the token answer is not JSON")?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| anyhow!("the token answer holds no token"))?;
        // The spec's default lifetime when `expires_in` is missing.
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(60));
        let mut header = HeaderValue::try_from(format!("Bearer {token}"))
            .context("the token is not a header value")?;
        header.set_sensitive(true);
        Ok(Authorization::Bearer {
            token_url: token_url.to_owned(),
            header,
            fetched,
            lifetime,
        })
    }

    /// Fetches a new token when the current one has lived half its lifetime. Called between
    /// scenarios, never in the middle of one.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let token_url = match &*self.authorization.read().expect("not poisoned") {
            Authorization::Bearer {
                token_url,
                fetched,
                lifetime,
                ..
            } if fetched.elapsed() > *lifetime / 2 => token_url.clone(),
            _ => return Ok(()),
        };
        let fresh = self.fetch_token(&token_url).await?;
        *self.authorization.write().expect("not poisoned") = fresh;
        Ok(())
    }

    /// Whether requests carry a Bearer token.
    pub fn uses_tokens(&self) -> bool {
        matches!(
            &*self.authorization.read().expect("not poisoned"),
            Authorization::Bearer { .. }
        )
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &*self.authorization.read().expect("not poisoned") {
            Authorization::None => request,
            Authorization::Basic(header) | Authorization::Bearer { header, .. } => {
                request.header(header::AUTHORIZATION, header.clone())
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An upload `Location`, made absolute.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("https://") || location.starts_with("http://") {
            location.to_owned()
        } else {
            self.url(location)
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/`: a new upload session's URL.
    pub async fn start_upload(&self, repository: &str) -> anyhow::Result<String> {
        let response = self
            .request(
                Method::POST,
                &self.url(&format!("/v2/{repository}/blobs/uploads/")),
            )
            .header(header::CONTENT_LENGTH, 0)
            .send()
            .await?;
        let response = expect(response, StatusCode::ACCEPTED, "starting an upload").await?;
        self.location(response.headers())
    }

    fn location(&self, headers: &HeaderMap) -> anyhow::Result<String> {
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("the answer has no Location"))?;
        Ok(self.absolute(location))
    }

    /// `PUT <upload>?digest=…` carrying the whole blob (a monolithic push).
    pub async fn put_whole(
        &self,
        upload: &str,
        payload: &Payload,
        digest: &str,
    ) -> anyhow::Result<()> {
        let response = self
            .request(Method::PUT, &with_digest(upload, digest))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, payload.size)
            .body(payload.body())
            .send()
            .await?;
        expect(response, StatusCode::CREATED, "a monolithic PUT").await?;
        Ok(())
    }

    /// One `PATCH` streaming the whole blob with chunked encoding and no `Content-Range`,
    /// as docker and podman send a layer. Returns the next upload URL.
    pub async fn patch_stream(&self, upload: &str, payload: &Payload) -> anyhow::Result<String> {
        let response = self
            .request(Method::PATCH, upload)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(payload.body())
            .send()
            .await?;
        let response = expect(response, StatusCode::ACCEPTED, "a streamed PATCH").await?;
        self.location(response.headers())
    }

    /// One `PATCH` of bytes in memory (a small blob), with `Content-Length`.
    pub async fn patch_bytes(&self, upload: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
        let response = self
            .request(Method::PATCH, upload)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .send()
            .await?;
        let response = expect(response, StatusCode::ACCEPTED, "a PATCH").await?;
        self.location(response.headers())
    }

    /// One `PATCH` of `range` with `Content-Range` and `Content-Length` (a chunked push).
    pub async fn patch_range(
        &self,
        upload: &str,
        payload: &Payload,
        range: std::ops::Range<u64>,
    ) -> anyhow::Result<String> {
        let response = self
            .request(Method::PATCH, upload)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(
                header::CONTENT_RANGE,
                format!("{}-{}", range.start, range.end - 1),
            )
            .header(header::CONTENT_LENGTH, range.end - range.start)
            .body(payload.body_of(range))
            .send()
            .await?;
        let response = expect(response, StatusCode::ACCEPTED, "a chunk PATCH").await?;
        self.location(response.headers())
    }

    /// `PUT <upload>?digest=…` with no body: closes an upload.
    pub async fn finish_upload(&self, upload: &str, digest: &str) -> anyhow::Result<()> {
        let response = self
            .request(Method::PUT, &with_digest(upload, digest))
            .header(header::CONTENT_LENGTH, 0)
            .send()
            .await?;
        expect(response, StatusCode::CREATED, "closing an upload").await?;
        Ok(())
    }

    /// POST, one streamed PATCH, PUT `?digest=`: a blob pushed the way docker does.
    pub async fn push_streamed(
        &self,
        repository: &str,
        payload: &Payload,
        digest: &str,
    ) -> anyhow::Result<()> {
        let upload = self.start_upload(repository).await?;
        let upload = self.patch_stream(&upload, payload).await?;
        self.finish_upload(&upload, digest).await
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: whether the registry holds the blob.
    pub async fn blob_exists(&self, repository: &str, digest: &str) -> anyhow::Result<bool> {
        let response = self
            .request(
                Method::HEAD,
                &self.url(&format!("/v2/{repository}/blobs/{digest}")),
            )
            .send()
            .await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => bail!("HEAD of a blob answered {status}"),
        }
    }

    /// `GET /v2/<repo>/blobs/<digest>`, reading the body to the end; returns its length.
    pub async fn pull_blob(&self, repository: &str, digest: &str) -> anyhow::Result<u64> {
        let response = self
            .request(
                Method::GET,
                &self.url(&format!("/v2/{repository}/blobs/{digest}")),
            )
            .send()
            .await?;
        let mut response = expect(response, StatusCode::OK, "a blob GET").await?;
        let mut length = 0u64;
        while let Some(piece) = response.chunk().await? {
            length += piece.len() as u64;
        }
        Ok(length)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with an OCI image manifest.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: Vec<u8>,
    ) -> anyhow::Result<()> {
        let response = self
            .request(
                Method::PUT,
                &self.url(&format!("/v2/{repository}/manifests/{reference}")),
            )
            .header(header::CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest)
            .send()
            .await?;
        expect(response, StatusCode::CREATED, "a manifest PUT").await?;
        Ok(())
    }

    /// `GET` (reading the body) or `HEAD` of `/v2/<repo>/manifests/<reference>`.
    pub async fn fetch_manifest(
        &self,
        method: Method,
        repository: &str,
        reference: &str,
    ) -> anyhow::Result<()> {
        let response = self
            .request(
                method,
                &self.url(&format!("/v2/{repository}/manifests/{reference}")),
            )
            .header(header::ACCEPT, ACCEPT_MANIFESTS)
            .send()
            .await?;
        let response = expect(response, StatusCode::OK, "a manifest fetch").await?;
        response.bytes().await?;
        Ok(())
    }
}

/// Checks the status, turning anything else into an error that shows the registry's answer.
async fn expect(
    response: reqwest::Response,
    wanted: StatusCode,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    if response.status() == wanted {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(400).collect();
    bail!("{what} answered {status} (wanted {wanted}): {body}")
}

fn with_digest(upload: &str, digest: &str) -> String {
    let separator = if upload.contains('?') { '&' } else { '?' };
    format!("{upload}{separator}digest={digest}")
}

fn basic_header(credentials: &Credentials) -> HeaderValue {
    use base64::Engine as _;
    let pair = format!("{}:{}", credentials.username, credentials.password);
    let mut value = HeaderValue::try_from(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
    .expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// Splits `Bearer realm="…",service="…"` into its scheme and parameters.
pub fn parse_challenge(challenge: &str) -> Option<(String, Vec<(String, String)>)> {
    let challenge = challenge.trim();
    let (scheme, rest) = match challenge.split_once(' ') {
        Some((scheme, rest)) => (scheme, rest),
        None if !challenge.is_empty() => (challenge, ""),
        None => return None,
    };
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        params.push((key, value.to_owned()));
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_owned(), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_challenge_gives_realm_service_and_scope() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://127.0.0.1:5000/auth/token",service="bulwark",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                (
                    "realm".to_owned(),
                    "https://127.0.0.1:5000/auth/token".to_owned()
                ),
                ("service".to_owned(), "bulwark".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull,push".to_owned()),
            ]
        );
    }

    #[test]
    fn a_basic_challenge_has_a_realm() {
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(scheme, "Basic");
        assert_eq!(params[0].1, "Registry Realm");
    }

    #[test]
    fn an_empty_challenge_is_none() {
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn the_digest_joins_the_upload_query() {
        assert_eq!(
            with_digest("https://r/u/1", "sha256:x"),
            "https://r/u/1?digest=sha256:x"
        );
        assert_eq!(
            with_digest("https://r/u/1?_state=s", "sha256:x"),
            "https://r/u/1?_state=s&digest=sha256:x"
        );
    }
}
