//! Authentication and authorization as clients meet them: the Bearer challenge of `/v2/`, the
//! Docker token service (GET with Basic credentials, POST with the OAuth2 form), `login` of
//! skopeo, podman and docker (docker over TLS it really verifies) as the admin, as a user who is
//! no admin and as robots, robot accounts of the admin API within their grants until revoked, and an upload that outlives its token for the
//! principal that started it and for no one else.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::clients::{output, path_str, printed, run, run_failing, stdout_text, Clients};
use crate::support::docker::{ConnectProxy, Dockerd, TrustedCa};
use crate::support::http::{Auth, Http, Reply};
use crate::support::layout::{self, layer_digests};
use crate::support::server::{admin_creds, creds, Server, ADMIN_PASSWORD, ADMIN_USER};
use crate::support::{random_bytes, sha256_digest};

/// The token service's `service`, the default of `bulwark serve`.
const SERVICE: &str = "bulwark";

/// `/auth/token?service=…&scope=…` asking for each of `scopes`.
fn token_path(scopes: &[&str]) -> String {
    let mut path = format!("/auth/token?service={SERVICE}");
    for scope in scopes {
        path.push_str("&scope=");
        path.push_str(scope);
    }
    path
}

/// A registry token for `http`'s credentials, from `GET /auth/token`; the request must succeed.
fn fetch_token(http: &Http, scopes: &[&str]) -> String {
    let reply = http.get(&token_path(scopes));
    assert_eq!(
        reply.status,
        200,
        "GET {}: {}",
        token_path(scopes),
        reply.text()
    );
    reply.json()["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {}", reply.text()))
        .to_owned()
}

/// An anonymous client of `server` presenting `token` as Bearer.
fn bearer(server: &Server, token: &str) -> Http {
    Http::anonymous(server).with_auth(Auth::Bearer(token.to_owned()))
}

/// The value of the `name="value"` parameter of a `WWW-Authenticate` challenge.
fn challenge_parameter(challenge: &str, name: &str) -> Option<String> {
    let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    let length = challenge[start..].find('"')?;
    Some(challenge[start..start + length].to_owned())
}

/// Whether a client's error output (lowercased) blames the username or password.
fn refused_for_credentials(stderr: &str) -> bool {
    ["unauthorized", "401", "invalid username"]
        .iter()
        .any(|phrase| stderr.contains(phrase))
}

/// Whether a client's error output (lowercased) shows the registry refusing access: a 401
/// (no usable credentials) or a 403 (credentials that do not allow it), never a TLS failure.
fn refused_access(stderr: &str) -> bool {
    let refused = [
        "unauthorized",
        "authentication required",
        "denied",
        "forbidden",
        "401",
        "403",
    ];
    refused.iter().any(|phrase| stderr.contains(phrase)) && !stderr.contains("x509")
}

/// The first error code of a `/v2` error envelope.
fn error_code(reply: &Reply) -> String {
    reply.json()["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {}", reply.text()))
        .to_owned()
}

/// A request to the admin API as the server's admin; the answer must have status `expected`.
fn admin_api(
    server: &Server,
    method: Method,
    path: &str,
    body: Option<&Value>,
    expected: u16,
) -> Value {
    let http = Http::new(server);
    let reply = match body {
        Some(body) => http.send_json(method.clone(), path, body),
        None => http.send(method.clone(), path, &[], Vec::new()),
    };
    assert_eq!(
        reply.status,
        expected,
        "{method} {path} as the admin answered {} (a 404 with the /v2 error envelope means \
         the admin API is not mounted in the router): {}",
        reply.status,
        reply.text()
    );
    if reply.body.is_empty() {
        Value::Null
    } else {
        reply.json()
    }
}

#[test]
fn anonymous_clients_are_challenged_and_the_token_service_issues_scoped_tokens() {
    let server = Server::start();
    let port = server.port();
    let anonymous = Http::anonymous(&server);

    let reply = anonymous.get("/v2/");
    assert_eq!(reply.status, 401, "anonymous GET /v2/: {}", reply.text());
    assert_eq!(
        reply.header("www-authenticate"),
        format!("Bearer realm=\"https://localhost:{port}/auth/token\",service=\"{SERVICE}\""),
        "the challenge names the token service at the address the client used"
    );
    assert_eq!(error_code(&reply), "UNAUTHORIZED");
    let reply = anonymous.manifest("team/app", "v1");
    assert_eq!(
        reply.status,
        401,
        "anonymous GET manifest: {}",
        reply.text()
    );
    assert_eq!(
        challenge_parameter(reply.header("www-authenticate"), "scope").as_deref(),
        Some("repository:team/app:pull"),
        "a repository's challenge names the scope it needs: {:?}",
        reply.header("www-authenticate")
    );

    // GET /auth/token with Basic credentials.
    let admin = Http::new(&server);
    let grant = admin.get(&token_path(&["repository:team/app:pull,push"]));
    assert_eq!(grant.status, 200, "token request: {}", grant.text());
    let body = grant.json();
    let token = body["token"].as_str().expect("a token").to_owned();
    assert_eq!(body["access_token"], body["token"], "{body}");
    assert!(
        body["expires_in"].as_u64().is_some_and(|secs| secs > 0),
        "{body}"
    );
    assert!(body["issued_at"].is_string(), "{body}");

    let with_token = bearer(&server, &token);
    let base = with_token.get("/v2/");
    assert_eq!(base.status, 200, "GET /v2/ with the token: {}", base.text());
    let blob = b"pushed with a registry token\n".to_vec();
    let digest = sha256_digest(&blob);
    let location = with_token.start_upload("team/app");
    let separator = if location.contains('?') { '&' } else { '?' };
    let pushed = with_token.send(
        Method::PUT,
        &format!("{location}{separator}digest={digest}"),
        &[("content-type", "application/octet-stream")],
        blob.clone(),
    );
    assert_eq!(pushed.status, 201, "monolithic PUT: {}", pushed.text());

    // curl with the same token as Bearer.
    let ca = server.data_dir().join("tls/ca.crt");
    let pulled = run(Command::new("curl").args([
        "-sS",
        "--fail",
        "--cacert",
        path_str(&ca),
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("https://{}/v2/team/app/blobs/{digest}", server.host()),
    ]));
    assert!(pulled.stdout == blob, "curl fetched other bytes");

    // The token grants what was asked for, and nothing more, even to an admin.
    let elsewhere = with_token.send(
        Method::POST,
        "/v2/team/other/blobs/uploads/",
        &[],
        Vec::new(),
    );
    assert_eq!(elsewhere.status, 401, "{}", elsewhere.text());
    let challenge = elsewhere.header("www-authenticate");
    assert_eq!(
        challenge_parameter(challenge, "error").as_deref(),
        Some("insufficient_scope"),
        "{challenge}"
    );
    assert_eq!(
        challenge_parameter(challenge, "scope").as_deref(),
        Some("repository:team/other:pull,push"),
        "{challenge}"
    );
    let pull_only = bearer(&server, &fetch_token(&admin, &["repository:team/app:pull"]));
    assert_eq!(
        pull_only
            .get(&format!("/v2/team/app/blobs/{digest}"))
            .status,
        200
    );
    let push = pull_only.send(Method::POST, "/v2/team/app/blobs/uploads/", &[], Vec::new());
    assert_eq!(
        push.status,
        401,
        "a pull-only token pushes: {}",
        push.text()
    );

    // POST /auth/token with the OAuth2 password grant.
    let form = format!(
        "grant_type=password&service={SERVICE}&client_id=blackbox&username={ADMIN_USER}\
         &password={ADMIN_PASSWORD}&scope=repository:team/app:pull"
    );
    let posted = anonymous.send(
        Method::POST,
        "/auth/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        form.into_bytes(),
    );
    assert_eq!(posted.status, 200, "POST /auth/token: {}", posted.text());
    let access_token = posted.json()["access_token"]
        .as_str()
        .expect("an access_token")
        .to_owned();
    assert_eq!(
        bearer(&server, &access_token)
            .get(&format!("/v2/team/app/blobs/{digest}"))
            .status,
        200
    );

    // A wrong password gets no token, by either form, and no access with Basic on /v2.
    let wrong = Http::anonymous(&server).with_auth(Auth::basic(ADMIN_USER, "not-the-password"));
    let refused = wrong.get(&token_path(&["repository:team/app:pull"]));
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(
        refused.json()["error"],
        "invalid_grant",
        "{}",
        refused.text()
    );
    let refused = anonymous.send(
        Method::POST,
        "/auth/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!(
            "grant_type=password&service={SERVICE}&username={ADMIN_USER}&password=not-the-password"
        )
        .into_bytes(),
    );
    assert_eq!(refused.status, 401, "{}", refused.text());
    let refused = wrong.get(&format!("/v2/team/app/blobs/{digest}"));
    assert_eq!(refused.status, 401, "{}", refused.text());
}

#[test]
fn skopeo_and_podman_log_in_and_then_push_and_pull_without_credentials() {
    let server = Server::start();
    let certs = server.certs_dir();
    let certs = path_str(certs.path());
    let clients = Clients::new();
    let http = Http::new(&server);
    let host = server.host();
    let (layout, image) = layout::single_image(&clients.scratch("login"), "team-login", "v1");
    let remote = format!("docker://{host}/team/login:v1");
    let auth_file = clients.auth_file();
    let stored_hosts = || -> Vec<String> {
        let text = std::fs::read_to_string(&auth_file).expect("reading the auth file");
        let auth: Value = serde_json::from_str(&text).expect("the auth file is JSON");
        auth["auths"]
            .as_object()
            .map(|auths| auths.keys().cloned().collect())
            .unwrap_or_default()
    };

    let refused = clients.skopeo_failing([
        "login",
        "--cert-dir",
        certs,
        "-u",
        ADMIN_USER,
        "-p",
        "not-the-password",
        &host,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        refused_for_credentials(&stderr),
        "skopeo login with a wrong password should fail for the credentials:\n{}",
        printed(&refused)
    );
    assert!(
        stored_hosts().is_empty(),
        "a failed login stored credentials"
    );
    let refused = clients.skopeo_failing([
        "copy",
        "--dest-cert-dir",
        certs,
        &layout.reference("v1"),
        &remote,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        refused_access(&stderr),
        "a push without logging in should be refused by the registry:\n{}",
        printed(&refused)
    );
    assert_eq!(
        http.manifest("team/login", "v1").status,
        404,
        "nothing was pushed"
    );

    let login = clients.skopeo([
        "login",
        "--cert-dir",
        certs,
        "-u",
        ADMIN_USER,
        "-p",
        ADMIN_PASSWORD,
        &host,
    ]);
    assert!(
        stdout_text(&login).contains("Login Succeeded"),
        "{}",
        printed(&login)
    );
    assert_eq!(stored_hosts(), vec![host.clone()]);
    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        certs,
        &layout.reference("v1"),
        &remote,
    ]);
    let served = http.manifest("team/login", "v1");
    assert_eq!(served.status, 200);
    assert_eq!(
        served.header("docker-content-digest"),
        image.descriptor.digest
    );
    let raw = clients.skopeo(["inspect", "--raw", "--cert-dir", certs, &remote]);
    assert_eq!(sha256_digest(&raw.stdout), image.descriptor.digest);
    clients.skopeo(["logout", &host]);
    assert!(stored_hosts().is_empty(), "skopeo logout left credentials");

    let podman = |args: &[&str]| run(clients.command("podman").args(args));
    let refused = run_failing(clients.command("podman").args([
        "login",
        "--cert-dir",
        certs,
        "-u",
        ADMIN_USER,
        "-p",
        "not-the-password",
        &host,
    ]));
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        refused_for_credentials(&stderr),
        "podman login with a wrong password should fail for the credentials:\n{}",
        printed(&refused)
    );
    let login = podman(&[
        "login",
        "--cert-dir",
        certs,
        "-u",
        ADMIN_USER,
        "-p",
        ADMIN_PASSWORD,
        &host,
    ]);
    assert!(
        stdout_text(&login).contains("Login Succeeded"),
        "{}",
        printed(&login)
    );
    let image_name = format!("{host}/team/login:v1");
    podman(&["pull", "--cert-dir", certs, &image_name]);
    let pulled = podman(&["image", "inspect", "--format", "{{.Digest}}", &image_name]);
    assert_eq!(stdout_text(&pulled), image.descriptor.digest);
    let digest_file = clients.scratch("digests").join("podman");
    podman(&[
        "push",
        "--cert-dir",
        certs,
        "--digestfile",
        path_str(&digest_file),
        &image_name,
        &format!("docker://{host}/team/login-podman:v1"),
    ]);
    let pushed = std::fs::read_to_string(&digest_file).expect("podman's digest file");
    let served = http.manifest("team/login-podman", "v1");
    assert_eq!(served.status, 200);
    assert_eq!(served.header("docker-content-digest"), pushed.trim());
    podman(&["logout", &host]);
    assert!(stored_hosts().is_empty(), "podman logout left credentials");

    // A user who is no admin (a developer of project `dev`) and a push robot of that project
    // log in the same way; what they push and pull goes through the stored login alone.
    const DEVELOPER: &str = "dana";
    const DEVELOPER_PASSWORD: &str = "dana-password-long";
    admin_api(
        &server,
        Method::POST,
        "/api/v1/projects",
        Some(&json!({ "name": "dev", "public": false })),
        201,
    );
    admin_api(
        &server,
        Method::POST,
        "/api/v1/users",
        Some(&json!({ "name": DEVELOPER, "password": DEVELOPER_PASSWORD, "admin": false })),
        201,
    );
    admin_api(
        &server,
        Method::PUT,
        &format!("/api/v1/projects/dev/members/{DEVELOPER}"),
        Some(&json!({ "role": "developer" })),
        200,
    );
    let (robot, robot_secret) = create_robot(&server, "dev", "pusher", &["pull", "push"]);
    let pulled_layout = clients.scratch("pulled");
    for (who, user, password) in [
        ("developer", DEVELOPER, DEVELOPER_PASSWORD),
        ("robot", robot.as_str(), robot_secret.as_str()),
    ] {
        let login = clients.skopeo([
            "login",
            "--cert-dir",
            certs,
            "-u",
            user,
            "-p",
            password,
            &host,
        ]);
        assert!(
            stdout_text(&login).contains("Login Succeeded"),
            "skopeo login as the {who} {user}\n{}",
            printed(&login)
        );
        assert_eq!(stored_hosts(), vec![host.clone()]);
        let tag = format!("skopeo-{who}");
        let remote = format!("docker://{host}/dev/app:{tag}");
        clients.skopeo([
            "copy",
            "--dest-cert-dir",
            certs,
            &layout.reference("v1"),
            &remote,
        ]);
        let served = http.manifest("dev/app", &tag);
        assert_eq!(served.status, 200, "{}", served.text());
        assert_eq!(
            served.header("docker-content-digest"),
            image.descriptor.digest
        );
        clients.skopeo([
            "copy",
            "--src-cert-dir",
            certs,
            &remote,
            &format!("oci:{}:{tag}", pulled_layout.display()),
        ]);
        let (descriptor, _) = layout::read_tagged(&pulled_layout, &tag);
        assert_eq!(descriptor.digest, image.descriptor.digest);
        // The stored login is this principal's and not the admin's: outside `dev` it is
        // refused as a known principal (403; skopeo's HEAD of a blob there has no body to
        // say `denied`), not asked to log in (401).
        let denied = clients.skopeo_failing([
            "copy",
            "--dest-cert-dir",
            certs,
            &layout.reference("v1"),
            &format!("docker://{host}/team/login:{tag}"),
        ]);
        let stderr = String::from_utf8_lossy(&denied.stderr).to_lowercase();
        assert!(
            ["denied", "forbidden", "403"]
                .iter()
                .any(|phrase| stderr.contains(phrase)),
            "a push of the {who} {user} outside project dev should be denied:\n{}",
            printed(&denied)
        );
        assert_eq!(
            http.manifest("team/login", &tag).status,
            404,
            "nothing was pushed"
        );
        clients.skopeo(["logout", &host]);
        assert!(stored_hosts().is_empty(), "skopeo logout left credentials");

        let login = podman(&[
            "login",
            "--cert-dir",
            certs,
            "-u",
            user,
            "-p",
            password,
            &host,
        ]);
        assert!(
            stdout_text(&login).contains("Login Succeeded"),
            "podman login as the {who} {user}\n{}",
            printed(&login)
        );
        assert_eq!(stored_hosts(), vec![host.clone()]);
        let tag = format!("podman-{who}");
        let pushed_name = format!("{host}/dev/app:{tag}");
        let digest_file = clients.scratch("digests").join(&tag);
        podman(&[
            "push",
            "--cert-dir",
            certs,
            "--digestfile",
            path_str(&digest_file),
            &image_name,
            &format!("docker://{pushed_name}"),
        ]);
        let pushed = std::fs::read_to_string(&digest_file).expect("podman's digest file");
        let served = http.manifest("dev/app", &tag);
        assert_eq!(served.status, 200, "{}", served.text());
        assert_eq!(served.header("docker-content-digest"), pushed.trim());
        podman(&["pull", "--cert-dir", certs, &pushed_name]);
        // The pull resolved the tag to what was pushed (a manifest podman rewrote, so not
        // the image's first digest, `.Digest`).
        let pulled = podman(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &pushed_name,
        ]);
        assert!(
            stdout_text(&pulled).contains(&format!("{host}/dev/app@{}", pushed.trim())),
            "podman pull as the {who} {user}\n{}",
            printed(&pulled)
        );
        podman(&["logout", &host]);
        assert!(stored_hosts().is_empty(), "podman logout left credentials");
    }
}

/// The digest after `marker` (`digest: ` of `docker push`, `Digest: ` of `docker pull`).
fn digest_after(text: &str, marker: &str) -> Option<String> {
    let start = text.find(marker)? + marker.len();
    Some(text[start..].split_whitespace().next()?.trim().to_owned())
}

#[test]
fn docker_logs_in_pushes_and_pulls_over_tls_it_verifies() {
    const NAME: &str = "registry.test";
    let server = Server::start_with(&["--tls-san", NAME]);
    let registry = format!("{NAME}:{}", server.port());
    let proxy = ConnectProxy::start(NAME, server.port());
    let docker = Dockerd::start(&proxy);
    let password = format!("{ADMIN_PASSWORD}\n");
    let login = [
        "login",
        registry.as_str(),
        "-u",
        ADMIN_USER,
        "--password-stdin",
    ];
    assert!(
        !Path::new("/etc/docker/certs.d").join(&registry).exists(),
        "this machine already trusts a CA for {registry}"
    );

    // Without the CA, dockerd refuses the certificate: TLS really is verified.
    let refused = docker.docker_failing(&login, Some(password.as_bytes()));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("x509") && stderr.contains("unknown authority"),
        "docker login without the CA should fail verifying the certificate:\n{}",
        printed(&refused)
    );
    assert!(
        proxy.requested().contains(&registry),
        "dockerd did not go through the proxy to {registry}: {:?}",
        proxy.requested()
    );

    let _trusted = TrustedCa::install(&registry, &server.ca_pem());
    let refused = docker.docker_failing(
        &["login", &registry, "-u", ADMIN_USER, "--password-stdin"],
        Some(b"not-the-password\n"),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        refused_for_credentials(&stderr),
        "docker login with a wrong password should fail for the credentials:\n{}",
        printed(&refused)
    );
    let logged_in = docker.docker(&login, Some(password.as_bytes()));
    assert!(
        stdout_text(&logged_in).contains("Login Succeeded"),
        "{}",
        printed(&logged_in)
    );

    let rootfs = docker.scratch_file("rootfs.tar", &layout::busybox_rootfs("team-docker"));
    let image = format!("{registry}/team/docker:v1");
    docker.docker(
        &[
            "import",
            "--change",
            r#"ENTRYPOINT ["/bin/busybox"]"#,
            path_str(&rootfs),
            &image,
        ],
        None,
    );
    let push = docker.docker(&["push", &image], None);
    let pushed = digest_after(&stdout_text(&push), "digest: ")
        .unwrap_or_else(|| panic!("no digest in docker push's output\n{}", printed(&push)));
    let http = Http::new(&server);
    let served = http.manifest("team/docker", "v1");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.header("docker-content-digest"), pushed);
    assert_eq!(sha256_digest(&served.body), pushed);
    for layer in layer_digests(&served.body) {
        assert_eq!(sha256_digest(&http.blob("team/docker", &layer)), layer);
    }

    docker.docker(&["rmi", &image], None);
    docker.docker_failing(&["image", "inspect", &image], None);
    let pull = docker.docker(&["pull", &image], None);
    assert_eq!(
        digest_after(&stdout_text(&pull), "Digest: ").as_deref(),
        Some(pushed.as_str()),
        "docker pull reports the pushed digest\n{}",
        printed(&pull)
    );
    let repo_digests = docker.docker(
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image,
        ],
        None,
    );
    assert!(
        stdout_text(&repo_digests).contains(&format!("{registry}/team/docker@{pushed}")),
        "{}",
        printed(&repo_digests)
    );
    // What was pulled runs: the layer arrived whole.
    let ran = docker.docker(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "cat",
            "/etc/bulwark-test",
        ],
        None,
    );
    assert_eq!(stdout_text(&ran), "team-docker");
    docker.logout(&registry);

    // A robot with pull and push on project `ci` logs in the same way, and pushes and pulls
    // there.
    admin_api(
        &server,
        Method::POST,
        "/api/v1/projects",
        Some(&json!({ "name": "ci", "public": false })),
        201,
    );
    let (pusher, pusher_secret) = create_robot(&server, "ci", "docker-pusher", &["pull", "push"]);
    let (reader, reader_secret) = create_robot(&server, "ci", "docker-reader", &["pull"]);
    docker.login(&registry, &pusher, &pusher_secret);
    let robot_image = format!("{registry}/ci/app:v1");
    docker.docker(&["tag", &image, &robot_image], None);
    let push = docker.docker(&["push", &robot_image], None);
    let robot_pushed = digest_after(&stdout_text(&push), "digest: ")
        .unwrap_or_else(|| panic!("no digest in docker push's output\n{}", printed(&push)));
    let served = http.manifest("ci/app", "v1");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.header("docker-content-digest"), robot_pushed);
    docker.docker(&["rmi", &robot_image], None);
    let pull = docker.docker(&["pull", &robot_image], None);
    assert_eq!(
        digest_after(&stdout_text(&pull), "Digest: ").as_deref(),
        Some(robot_pushed.as_str()),
        "docker pull as {pusher} reports the pushed digest\n{}",
        printed(&pull)
    );
    docker.logout(&registry);

    // A pull-only robot logs in and pulls, but its push is denied.
    docker.login(&registry, &reader, &reader_secret);
    docker.docker(&["rmi", &robot_image], None);
    docker.docker(&["pull", &robot_image], None);
    let rootfs = docker.scratch_file("reader-rootfs.tar", &layout::busybox_rootfs("ci-reader"));
    let refused_image = format!("{registry}/ci/app:reader");
    docker.docker(&["import", path_str(&rootfs), &refused_image], None);
    let refused = docker.docker_failing(&["push", &refused_image], None);
    assert!(
        printed(&refused).contains("denied"),
        "docker push as the pull-only robot {reader} should be denied:\n{}",
        printed(&refused)
    );
    assert_eq!(
        http.manifest("ci/app", "reader").status,
        404,
        "nothing was pushed"
    );
    docker.logout(&registry);
    assert!(
        proxy.requested().iter().all(|target| *target == registry),
        "dockerd asked the proxy for other destinations: {:?}",
        proxy.requested()
    );
}

/// A robot of project `project` with one grant, created through the admin API; returns its
/// login name and secret.
fn create_robot(server: &Server, project: &str, name: &str, actions: &[&str]) -> (String, String) {
    let robot = admin_api(
        server,
        Method::POST,
        &format!("/api/v1/projects/{project}/robots"),
        Some(&json!({
            "name": name,
            "grants": [{ "repositories": format!("{project}/*"), "actions": actions }],
            "expires_in": "30d",
        })),
        201,
    );
    let full_name = robot["name"].as_str().expect("the robot's name").to_owned();
    assert_eq!(full_name, format!("robot${project}+{name}"), "{robot}");
    let secret = robot["secret"]
        .as_str()
        .expect("the robot's secret")
        .to_owned();
    assert!(secret.starts_with("bwk_"), "a robot secret: {secret}");
    (full_name, secret)
}

#[test]
fn robots_pull_and_push_within_their_grants_until_revoked() {
    let server = Server::start();
    let certs = server.certs_dir();
    let certs = path_str(certs.path());
    let clients = Clients::new();
    let host = server.host();
    admin_api(
        &server,
        Method::POST,
        "/api/v1/projects",
        Some(&json!({ "name": "ci", "public": false })),
        201,
    );
    let (reader, reader_secret) = create_robot(&server, "ci", "reader", &["pull"]);
    let (pusher, pusher_secret) = create_robot(&server, "ci", "pusher", &["pull", "push"]);
    let reader_creds = creds(&reader, &reader_secret);
    let pusher_creds = creds(&pusher, &pusher_secret);
    let (layout, image) = layout::single_image(&clients.scratch("ci"), "ci-app", "v1");
    let remote = |tag: &str| format!("docker://{host}/ci/app:{tag}");

    clients.skopeo([
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &pusher_creds,
        &layout.reference("v1"),
        &remote("v1"),
    ]);
    let http = Http::new(&server);
    let served = http.manifest("ci/app", "v1");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(
        served.header("docker-content-digest"),
        image.descriptor.digest
    );

    let pulled = clients.scratch("pulled");
    clients.skopeo([
        "copy",
        "--src-cert-dir",
        certs,
        "--src-creds",
        &reader_creds,
        &remote("v1"),
        &format!("oci:{}:v1", pulled.display()),
    ]);
    let (descriptor, _) = layout::read_tagged(&pulled, "v1");
    assert_eq!(descriptor.digest, image.descriptor.digest);

    let denied = clients.skopeo_failing([
        "copy",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        &reader_creds,
        &layout.reference("v1"),
        &remote("v2"),
    ]);
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("denied"),
        "a pull-only robot's push should be clearly denied:\n{}",
        printed(&denied)
    );
    assert_eq!(
        http.manifest("ci/app", "v2").status,
        404,
        "nothing was pushed"
    );
    // The private project shows nothing to anonymous clients.
    let anonymous =
        clients.skopeo_failing(["inspect", "--raw", "--cert-dir", certs, &remote("v1")]);
    let stderr = String::from_utf8_lossy(&anonymous.stderr).to_lowercase();
    assert!(
        refused_access(&stderr),
        "an anonymous pull of a private project should be refused by the registry:\n{}",
        printed(&anonymous)
    );

    let robot_http = Http::anonymous(&server).with_auth(Auth::basic(&reader, &reader_secret));
    let scope = ["repository:ci/app:pull"];
    fetch_token(&robot_http, &scope);
    admin_api(
        &server,
        Method::DELETE,
        "/api/v1/projects/ci/robots/reader",
        None,
        204,
    );
    let refused = robot_http.get(&token_path(&scope));
    assert_eq!(
        refused.status,
        401,
        "a revoked robot still gets tokens: {}",
        refused.text()
    );
    let refused = robot_http.manifest("ci/app", "v1");
    assert_eq!(refused.status, 401, "{}", refused.text());
    // The other robot is untouched.
    fetch_token(
        &Http::anonymous(&server).with_auth(Auth::basic(&pusher, &pusher_secret)),
        &scope,
    );
}

/// Token lifetime of the server in the expiry tests, as `--token-lifetime` takes it.
const SHORT_LIFETIME: &str = "2s";

/// Waits until a token issued now with `expires_in` seconds is past its expiry, with margin.
fn outlive(expires_in: u64) {
    std::thread::sleep(Duration::from_secs(expires_in + 2));
}

#[test]
fn an_upload_outlives_its_token_but_the_token_opens_nothing_else() {
    let server = Server::start_with(&["--token-lifetime", SHORT_LIFETIME]);
    let admin = Http::new(&server);
    let scope = ["repository:team/long:pull,push"];
    let grant = admin.get(&token_path(&scope));
    assert_eq!(grant.status, 200, "{}", grant.text());
    let expires_in = grant.json()["expires_in"].as_u64().expect("expires_in");
    assert_eq!(expires_in, 2, "--token-lifetime {SHORT_LIFETIME}");
    let token = grant.json()["token"].as_str().expect("a token").to_owned();
    let with_token = bearer(&server, &token);
    let blob = random_bytes(2 * 1024 * 1024 + 5);
    let digest = sha256_digest(&blob);
    let half = blob.len() / 2;

    let location = with_token.start_upload("team/long");
    let first = with_token.patch_upload(&location, 0, &blob[..half]);
    assert_eq!(first.status, 202, "{}", first.text());
    outlive(expires_in);

    // Another principal cannot touch the session: anonymous, with or without a token.
    let anonymous_token = token_of_anonymous(&server, &scope);
    for stranger in [Http::anonymous(&server), bearer(&server, &anonymous_token)] {
        let refused = stranger.patch_upload(&location, half, &blob[half..]);
        assert_eq!(refused.status, 401, "{}", refused.text());
        let refused = stranger.get(&location);
        assert_eq!(refused.status, 401, "{}", refused.text());
    }

    // The expired token carries on with the session it started.
    let status = with_token.get(&location);
    assert_eq!(status.status, 204, "upload status: {}", status.text());
    assert_eq!(status.header("range"), format!("0-{}", half - 1));
    let second = with_token.patch_upload(&location, half, &blob[half..]);
    assert_eq!(
        second.status,
        202,
        "PATCH with the expired token: {}",
        second.text()
    );
    let finished = with_token.finish_upload(&location, &digest);
    assert_eq!(
        finished.status,
        201,
        "PUT with the expired token: {}",
        finished.text()
    );
    assert!(
        admin.blob("team/long", &digest) == blob,
        "the blob has other bytes"
    );

    // ... and nothing else.
    let manifest = with_token.manifest("team/long", "v1");
    assert_eq!(
        manifest.status,
        401,
        "GET manifest with a token past its expires_in ({expires_in}s) must be refused; \
         a server that still honours it stretches every token's lifetime (a verification \
         leeway does): {}",
        manifest.text()
    );
    let challenge = manifest.header("www-authenticate");
    assert_eq!(
        challenge_parameter(challenge, "error").as_deref(),
        Some("invalid_token"),
        "{challenge}"
    );
    let blob_read = with_token.get(&format!("/v2/team/long/blobs/{digest}"));
    assert_eq!(blob_read.status, 401, "GET blob with the expired token");
    let new_upload = with_token.send(
        Method::POST,
        "/v2/team/long/blobs/uploads/",
        &[],
        Vec::new(),
    );
    assert_eq!(
        new_upload.status,
        401,
        "an expired token starts a new upload: {}",
        new_upload.text()
    );
}

/// A token issued to nobody in particular (no credentials) for `scopes`.
fn token_of_anonymous(server: &Server, scopes: &[&str]) -> String {
    fetch_token(&Http::anonymous(server), scopes)
}

#[test]
fn another_users_token_cannot_continue_an_upload() {
    const BOB_PASSWORD: &str = "bob-password-long";
    let server = Server::start_with(&["--token-lifetime", SHORT_LIFETIME]);
    admin_api(
        &server,
        Method::POST,
        "/api/v1/projects",
        Some(&json!({ "name": "team", "public": false })),
        201,
    );
    admin_api(
        &server,
        Method::POST,
        "/api/v1/users",
        Some(&json!({ "name": "bob", "password": BOB_PASSWORD, "admin": false })),
        201,
    );
    admin_api(
        &server,
        Method::PUT,
        "/api/v1/projects/team/members/bob",
        Some(&json!({ "role": "developer" })),
        200,
    );
    let scope = ["repository:team/shared:pull,push"];
    let admin = Http::new(&server);
    let admin_token = bearer(&server, &fetch_token(&admin, &scope));
    let bob = Http::anonymous(&server).with_auth(Auth::basic("bob", BOB_PASSWORD));
    let blob = random_bytes(256 * 1024 + 3);
    let digest = sha256_digest(&blob);
    let half = blob.len() / 2;

    let location = admin_token.start_upload("team/shared");
    let first = admin_token.patch_upload(&location, 0, &blob[..half]);
    assert_eq!(first.status, 202, "{}", first.text());
    outlive(2);

    // bob may push to team/shared (his own upload works) but not into the admin's session.
    let bob_token = bearer(&server, &fetch_token(&bob, &scope));
    let bobs_own = bob_token.start_upload("team/shared");
    assert!(!bobs_own.is_empty());
    for (what, reply) in [
        (
            "PATCH",
            bob_token.patch_upload(&location, half, &blob[half..]),
        ),
        ("GET", bob_token.get(&location)),
        ("PUT", bob_token.finish_upload(&location, &digest)),
        (
            "DELETE",
            bob_token.send(Method::DELETE, &location, &[], Vec::new()),
        ),
    ] {
        assert_eq!(
            reply.status,
            404,
            "{what} on another user's upload: {}",
            reply.text()
        );
        assert_eq!(error_code(&reply), "BLOB_UPLOAD_UNKNOWN", "{what}");
    }

    let second = admin_token.patch_upload(&location, half, &blob[half..]);
    assert_eq!(second.status, 202, "{}", second.text());
    let finished = admin_token.finish_upload(&location, &digest);
    assert_eq!(finished.status, 201, "{}", finished.text());
    assert!(admin.blob("team/shared", &digest) == blob);
}

/// The status curl gets for `GET /v2/` with Basic `user_password` and extra `headers`.
fn v2_status_with_curl(server: &Server, user_password: &str, headers: &[&str]) -> String {
    let ca = server.data_dir().join("tls/ca.crt");
    let url = format!("https://{}/v2/", server.host());
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .args(["-u", user_password]);
    for header in headers {
        curl.args(["-H", header]);
    }
    stdout_text(&output(curl.arg(&url)))
}

#[test]
fn the_admin_password_given_at_first_start_logs_in_and_is_not_written_to_disk() {
    // Every other test relies on the guard's admin: the password the server was given works
    // with curl's Basic on /v2/, and a wrong one does not.
    let server = Server::start();
    assert_eq!(v2_status_with_curl(&server, &admin_creds(), &[]), "200");
    assert_eq!(
        v2_status_with_curl(&server, &creds(ADMIN_USER, "not-the-password"), &[]),
        "401"
    );
    assert!(
        !server.data_dir().join("admin-password").exists(),
        "a given BULWARK_ADMIN_PASSWORD is not written to disk"
    );
}

#[test]
fn the_audit_log_names_the_client_a_trusted_balancer_forwarded() {
    // curl stands in for a balancer in HTTP mode: it connects from 127.0.0.1 and says whom it
    // forwarded. Only a server that trusts 127.0.0.1 believes it.
    let failed_login_client = |server: &Server| {
        let status = v2_status_with_curl(
            server,
            "nobody-here:a wrong password",
            &["X-Forwarded-For: 198.51.100.1, 192.0.2.9"],
        );
        assert_eq!(status, "401");
        let events = admin_api(
            server,
            Method::GET,
            "/api/v1/audit?action=login&result=failed",
            None,
            200,
        );
        events["items"][0]["client"]
            .as_str()
            .unwrap_or_else(|| panic!("a failed login with a client: {events}"))
            .to_owned()
    };
    let behind_balancer = Server::start_with(&["--trusted-proxy", "127.0.0.1"]);
    assert_eq!(
        failed_login_client(&behind_balancer),
        "192.0.2.9",
        "the address the trusted hop appended (the one before it is the client's own claim)"
    );
    let exposed = Server::start();
    assert_eq!(
        failed_login_client(&exposed),
        "127.0.0.1",
        "without trusted proxies the header is ignored"
    );
}
