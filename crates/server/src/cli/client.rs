//! HTTPS to the registry: whom to trust, how to authenticate, and how failures read.
//!
//! Invariants:
//! - Trust is explicit: the CA file given at login (or `BULWARK_CA_CERT`), else the system's
//!   bundle; reqwest's built-in roots are never used, so what is trusted is what was named.
//! - An API problem (`application/problem+json`) reads `<title>: <detail>`; a transport
//!   failure says what to check (the URL, the CA file), not just what the socket said.
//! - No `Debug` here prints a password or a token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::header::{HeaderMap, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::profile::{self, Profile};

/// Where the system's CA bundle is when no CA file is given (Debian, Ubuntu, Alpine, Arch).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The token service's name when the registry's challenge does not say.
const DEFAULT_SERVICE: &str = "bulwark";
/// The most listing pages read for one command; far beyond any real registry's size.
const MAX_PAGES: usize = 1000;

/// An error answer of the API or the token service, for people: `<title>: <detail>`.
#[derive(Debug)]
pub struct Problem {
    pub title: String,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.title)
        } else {
            write!(f, "{}: {}", self.title, self.detail)
        }
    }
}

impl std::error::Error for Problem {}

/// `https://host:port` from what a user typed (`host:port` alone means HTTPS).
pub fn registry_url(text: &str) -> anyhow::Result<Url> {
    let text = text.trim();
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("https://{text}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|err| anyhow!("{text:?} is not a registry URL like https://HOST:PORT: {err}"))?;
    if url.scheme() != "https" {
        let port = url
            .port()
            .map(|port| format!(":{port}"))
            .unwrap_or_default();
        bail!(
            "bulwark speaks HTTPS only: use https://{}{port}",
            url.host_str().unwrap_or("HOST")
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("{text:?} names no host: use https://HOST:PORT");
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

/// The base URL as stored and printed: no trailing slash.
pub fn display_url(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

/// A client trusting exactly `ca_cert`, or the system's bundle without one.
pub fn transport(ca_cert: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let (file, hint) = match ca_cert {
        Some(file) => (file, "the file given with --ca-cert"),
        None => (
            Path::new(SYSTEM_ROOTS),
            "the system's CA bundle; pass --ca-cert FILE instead",
        ),
    };
    let pem =
        std::fs::read(file).with_context(|| format!("reading {} ({hint})", file.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .ok()
        .filter(|certificates| !certificates.is_empty())
        .ok_or_else(|| anyhow!("{} holds no PEM certificate ({hint})", file.display()))?;
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .user_agent(concat!("bulwark/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    for certificate in certificates {
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().context("setting up HTTPS")
}

/// What a transport failure means for the person at the keyboard.
fn unreachable(err: &reqwest::Error, base: &Url, ca_cert: Option<&Path>) -> anyhow::Error {
    let mut causes: Vec<String> = Vec::new();
    let mut tls = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = source {
        tls |= error.is::<rustls::Error>()
            || error
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>());
        causes.push(error.to_string());
        source = error.source();
    }
    let cause = causes.last().cloned().unwrap_or_default();
    tls |=
        cause.contains("certificate") || cause.contains("InvalidMessage") || cause.contains("tls");
    let url = display_url(base);
    if err.is_timeout() {
        anyhow!("{url} did not answer in time: check the URL and that the registry is running")
    } else if tls {
        let check = match ca_cert {
            Some(file) => format!(
                "check that {} is the CA that signed the registry's certificate (bulwark-data/tls/ca.crt of a generated one), and that the URL is the registry's HTTPS port",
                file.display()
            ),
            None => "the system's CA bundle does not trust it: pass --ca-cert FILE (bulwark-data/tls/ca.crt of a generated certificate)".to_owned(),
        };
        anyhow!("TLS with {url} failed ({cause}): {check}")
    } else {
        anyhow!("cannot reach {url} ({cause}): check the URL (https://HOST:PORT) and that the registry is running")
    }
}

/// The problem in an error answer, whatever shape it has.
async fn problem(response: reqwest::Response) -> Problem {
    let status = response.status();
    let title = status.canonical_reason().unwrap_or("Error").to_owned();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("json"));
    let body = response.bytes().await.unwrap_or_default();
    let parsed: Option<Value> = if is_json {
        serde_json::from_slice(&body).ok()
    } else {
        None
    };
    let text = |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    match parsed {
        // RFC 9457, from the admin API.
        Some(value) if value.get("title").is_some() => Problem {
            title: text(&value, "title").unwrap_or(title),
            detail: text(&value, "detail").unwrap_or_default(),
        },
        // OAuth2, from the token service.
        Some(value) if value.get("error").is_some() => Problem {
            title,
            detail: text(&value, "error_description")
                .or_else(|| text(&value, "error"))
                .unwrap_or_default(),
        },
        // The distribution API's envelope.
        Some(value) if value.get("errors").is_some() => Problem {
            title,
            detail: value["errors"][0]
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        },
        _ => Problem {
            title: format!("{} {title}", status.as_u16()),
            detail: String::from_utf8_lossy(&body)
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect(),
        },
    }
}

/// The token service's answer.
pub struct Tokens {
    pub access: String,
    pub refresh: Option<String>,
}

/// The `service` named in the registry's Bearer challenge at `GET /v2/`, or the default.
pub async fn discover_service(
    http: &reqwest::Client,
    base: &Url,
    ca_cert: Option<&Path>,
) -> anyhow::Result<String> {
    let url = join(base, &["v2", ""]);
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|err| unreachable(&err, base, ca_cert))?;
    Ok(challenge_service(response.headers()).unwrap_or_else(|| DEFAULT_SERVICE.to_owned()))
}

fn challenge_service(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| challenge_parameter(value.strip_prefix("Bearer ")?, "service"))
}

/// One `key="value"` parameter of an authentication challenge.
fn challenge_parameter(parameters: &str, key: &str) -> Option<String> {
    let mut rest = parameters.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        if name.trim().eq_ignore_ascii_case(key) {
            return Some(value.to_owned());
        }
        rest = after.trim_start_matches([',', ' ']);
    }
    None
}

/// `POST /auth/token` with an OAuth2 form.
pub async fn exchange(
    http: &reqwest::Client,
    base: &Url,
    ca_cert: Option<&Path>,
    form: &[(&str, &str)],
) -> anyhow::Result<Tokens> {
    let url = join(base, &["auth", "token"]);
    let response = http
        .post(url)
        .form(form)
        .send()
        .await
        .map_err(|err| unreachable(&err, base, ca_cert))?;
    if !response.status().is_success() {
        return Err(problem(response).await.into());
    }
    let body = json_body(response)
        .await
        .context("reading the token service's answer")?;
    let access = body
        .get("access_token")
        .or_else(|| body.get("token"))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the token service answered without a token"))?
        .to_owned();
    let refresh = body
        .get("refresh_token")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Tokens { access, refresh })
}

/// `base` with path segments appended (each percent-encoded as needed).
fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

async fn json_body(response: reqwest::Response) -> anyhow::Result<Value> {
    let bytes = response.bytes().await.context("reading the answer")?;
    serde_json::from_slice(&bytes).context("the answer is not JSON")
}

enum Credentials {
    Bearer(String),
    Basic { username: String, password: String },
}

/// An authenticated connection to one registry's admin API.
pub struct Api {
    http: reqwest::Client,
    base: Url,
    ca_cert: Option<PathBuf>,
    credentials: Credentials,
    /// Whom the credentials name: a user (or robot) name.
    pub username: String,
    /// What to tell someone whose credentials were refused.
    relogin: String,
}

impl Api {
    /// Connects with the stored login, or else with `BULWARK_URL`, `BULWARK_USERNAME` and
    /// `BULWARK_PASSWORD` as Basic credentials.
    pub async fn connect() -> anyhow::Result<Api> {
        let path = profile::path()?;
        if let Some(profile) = profile::load(&path)? {
            return Api::from_profile(profile).await;
        }
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let Some(url) = variable("BULWARK_URL") else {
            bail!(
                "not logged in: run `bulwark login https://HOST:PORT`, or set BULWARK_URL, BULWARK_USERNAME and BULWARK_PASSWORD (no login stored at {})",
                path.display()
            );
        };
        let (Some(username), Some(password)) =
            (variable("BULWARK_USERNAME"), variable("BULWARK_PASSWORD"))
        else {
            bail!("BULWARK_URL is set, so BULWARK_USERNAME and BULWARK_PASSWORD (a password, access token or robot secret) must be too");
        };
        let base = registry_url(&url).context("BULWARK_URL")?;
        let ca_cert = variable("BULWARK_CA_CERT").map(PathBuf::from);
        Ok(Api {
            http: transport(ca_cert.as_deref())?,
            base,
            ca_cert,
            credentials: Credentials::Basic {
                username: username.clone(),
                password,
            },
            username,
            relogin: "check BULWARK_USERNAME and BULWARK_PASSWORD".to_owned(),
        })
    }

    async fn from_profile(profile: Profile) -> anyhow::Result<Api> {
        let base = registry_url(&profile.url)?;
        let http = transport(profile.ca_cert.as_deref())?;
        let relogin = format!("run `bulwark login {}` again", profile.url);
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", profile.refresh_token.as_str()),
            ("service", profile.service.as_str()),
            ("client_id", "bulwark-cli"),
        ];
        let tokens = match exchange(&http, &base, profile.ca_cert.as_deref(), &form).await {
            Ok(tokens) => tokens,
            Err(err) if err.is::<Problem>() => {
                return Err(
                    err.context(format!("the stored login is no longer accepted; {relogin}"))
                )
            }
            Err(err) => return Err(err),
        };
        Ok(Api {
            http,
            base,
            ca_cert: profile.ca_cert,
            credentials: Credentials::Bearer(tokens.access),
            username: profile.username,
            relogin,
        })
    }

    /// Sends a request to `/api/v1/<segments>`; the JSON answer, or `None` for 204.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Option<Value>> {
        let mut url = join(&self.base, &[&["api", "v1"], segments].concat());
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(key, value)| (*key, value.as_str())));
        }
        let mut request = self.http.request(method, url);
        request = match &self.credentials {
            Credentials::Bearer(token) => request.bearer_auth(token),
            Credentials::Basic { username, password } => {
                request.basic_auth(username, Some(password))
            }
        };
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|err| unreachable(&err, &self.base, self.ca_cert.as_deref()))?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return json_body(response).await.map(Some);
        }
        let is_problem = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/problem+json"));
        if status == StatusCode::NOT_FOUND && !is_problem {
            bail!(
                "{} has no admin API at /api/v1: is it an older bulwark?",
                display_url(&self.base)
            );
        }
        let mut problem = problem(response).await;
        if status == StatusCode::UNAUTHORIZED {
            problem.detail = format!("{} ({})", problem.detail, self.relogin);
        }
        Err(problem.into())
    }

    pub async fn get(&self, segments: &[&str]) -> anyhow::Result<Value> {
        self.call(Method::GET, segments, &[], None)
            .await
            .map(Option::unwrap_or_default)
    }

    pub async fn get_with(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        self.call(Method::GET, segments, query, None)
            .await
            .map(Option::unwrap_or_default)
    }

    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        body: &Value,
    ) -> anyhow::Result<Value> {
        self.call(method, segments, &[], Some(body))
            .await
            .map(Option::unwrap_or_default)
    }

    pub async fn delete(&self, segments: &[&str]) -> anyhow::Result<()> {
        self.call(Method::DELETE, segments, &[], None)
            .await
            .map(drop)
    }

    /// Every item of a listing, following its `next` cursors; shaped like one page.
    pub async fn list_all(&self, segments: &[&str]) -> anyhow::Result<Value> {
        let mut items: Vec<Value> = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("limit", "1000".to_owned())];
            query.extend(after.take().map(|cursor| ("after", cursor)));
            let mut page = self.get_with(segments, &query).await?;
            if let Some(Value::Array(page_items)) = page.get_mut("items").map(Value::take) {
                items.extend(page_items);
            }
            match page.get("next").and_then(Value::as_str) {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        Ok(serde_json::json!({ "items": items, "next": after }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls_are_https_without_a_trailing_slash() {
        let cases = [
            (
                "https://registry.test:5000",
                Some("https://registry.test:5000"),
            ),
            (
                "https://registry.test:5000/",
                Some("https://registry.test:5000"),
            ),
            ("registry.test:5000", Some("https://registry.test:5000")),
            (
                "https://registry.test/prefix/?x=1",
                Some("https://registry.test/prefix"),
            ),
            ("http://registry.test:5000", None),
            ("https://", None),
        ];
        for (text, expected) in cases {
            let parsed = registry_url(text).ok().map(|url| display_url(&url));
            assert_eq!(parsed.as_deref(), expected, "{text}");
        }
    }

    #[test]
    fn api_paths_are_encoded_segment_by_segment() {
        let base = registry_url("https://registry.test:5000").expect("url");
        let url = join(&base, &["api", "v1", "projects", "team", "robots", "a/b c"]);
        assert_eq!(
            url.as_str(),
            "https://registry.test:5000/api/v1/projects/team/robots/a%2Fb%20c"
        );
        let prefixed = registry_url("https://registry.test/prefix").expect("url");
        assert_eq!(
            join(&prefixed, &["v2", ""]).as_str(),
            "https://registry.test/prefix/v2/"
        );
    }

    #[test]
    fn the_service_comes_from_the_bearer_challenge() {
        let challenge = r#"realm="https://registry.test/auth/token",service="registry.test",scope="registry:catalog:*""#;
        assert_eq!(
            challenge_parameter(challenge, "service").as_deref(),
            Some("registry.test")
        );
        assert_eq!(
            challenge_parameter(challenge, "scope").as_deref(),
            Some("registry:catalog:*")
        );
        assert_eq!(
            challenge_parameter("realm=x, service=plain", "service").as_deref(),
            Some("plain")
        );
        assert_eq!(challenge_parameter(challenge, "error"), None);
    }

    #[test]
    fn problems_read_title_then_detail() {
        let problem = Problem {
            title: "Conflict".into(),
            detail: "project team exists".into(),
        };
        assert_eq!(problem.to_string(), "Conflict: project team exists");
    }
}
