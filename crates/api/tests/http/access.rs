//! Access control over HTTP: the Bearer challenge, the token service (GET with Basic, the
//! OAuth2 POST form, refresh tokens, scopes), tokens on `/v2` (missing scope, tampering),
//! the RBAC matrix for members, strangers and anonymous callers, upload sessions bound to
//! their principal, catalog filtering, mounts, throttling, the audit trail, and a store that
//! is down (503 with `Retry-After` on every surface).

use crate::support::{call, digest, TestRegistry, ADMIN, ADMIN_PASSWORD};
use auth::secret;
use base64::Engine as _;
use metadata::identity::{
    AccessTokenRecord, AuditFilter, IdentityStore as _, ProjectRecord, RobotRecord, UserRecord,
    UserUpdate,
};
use registry::access::AccessSettings;
use serde_json::Value;

const PASSWORD: &str = "a long enough password";

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A registry with project `team` (private), project `open` (public), and users with roles.
async fn team_registry() -> TestRegistry {
    let registry = TestRegistry::start().await;
    let hash = auth::password::hash(PASSWORD).expect("hash");
    for name in ["olive", "mia", "dev", "rita", "eve"] {
        registry
            .store
            .create_user(&UserRecord {
                name: name.into(),
                password_hash: hash.clone(),
                admin: false,
                disabled: false,
                created_at: 0,
            })
            .await
            .expect("create user");
    }
    for (name, public) in [("team", false), ("open", true)] {
        registry
            .store
            .create_project(&ProjectRecord {
                name: name.into(),
                public,
                created_at: 0,
            })
            .await
            .expect("create project");
    }
    for (user, role) in [
        ("olive", "owner"),
        ("mia", "maintainer"),
        ("dev", "developer"),
        ("rita", "reader"),
    ] {
        registry
            .store
            .set_member("team", user, role)
            .await
            .expect("member");
        registry
            .store
            .set_member("open", user, role)
            .await
            .expect("member");
    }
    registry
}

async fn token(registry: &TestRegistry, credentials: Option<(&str, &str)>, query: &str) -> Value {
    let mut request = call("GET", format!("/auth/token?{query}"));
    request = match credentials {
        Some((user, password)) => request.header("authorization", basic(user, password)),
        None => request.anonymous(),
    };
    let reply = registry.send(request).await;
    reply.expect(200);
    reply.json()
}

fn bearer(token: &Value) -> String {
    format!("Bearer {}", token["token"].as_str().expect("a token"))
}

/// The claims of a token answer's access token, read without verifying it.
fn claims(token: &Value) -> Value {
    let jwt = token["token"].as_str().expect("a token");
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("json")
}

/// Exchanges a refresh token at the token service (asking for a new refresh token with
/// `offline`); the reply as it comes.
async fn refresh(
    registry: &TestRegistry,
    refresh_token: &str,
    offline: bool,
) -> crate::support::Reply {
    let offline = if offline { "&access_type=offline" } else { "" };
    registry
        .send(
            call("POST", "/auth/token")
                .anonymous()
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("grant_type=refresh_token&refresh_token={refresh_token}&service=bulwark&scope=repository%3Ateam%2Fapp%3Apull{offline}").into_bytes()),
        )
        .await
}

/// A personal access token of `user`, stored directly; its secret.
async fn access_token(registry: &TestRegistry, user: &str, id: &str) -> String {
    let secret = secret::random();
    registry
        .store
        .create_access_token(
            &AccessTokenRecord {
                id: id.into(),
                user: user.into(),
                description: "test".into(),
                expires_at: None,
                revoked: false,
                created_at: 0,
                last_used_at: None,
            },
            &secret.hash,
        )
        .await
        .expect("create the access token");
    secret.plaintext
}

/// Robot `robot$team+ci` with push and pull on `team/*`, stored directly; its secret.
async fn team_robot(registry: &TestRegistry) -> String {
    let secret = secret::random();
    registry
        .store
        .create_robot(
            &RobotRecord {
                name: "robot$team+ci".into(),
                project: Some("team".into()),
                description: None,
                grants: r#"[{"pattern":"team/*","actions":["pull","push"]}]"#.into(),
                expires_at: i64::MAX,
                revoked: false,
                created_at: 0,
                last_used_at: None,
            },
            &secret.hash,
        )
        .await
        .expect("create the robot");
    secret.plaintext
}

#[tokio::test]
async fn anonymous_requests_are_challenged_towards_the_token_service() {
    let registry = TestRegistry::start().await;
    let cases = [
        ("GET", "/v2/", "Bearer realm=\"https://registry.test:5000/auth/token\",service=\"bulwark\""),
        (
            "GET",
            "/v2/team/app/manifests/latest",
            "Bearer realm=\"https://registry.test:5000/auth/token\",service=\"bulwark\",scope=\"repository:team/app:pull\"",
        ),
        (
            "POST",
            "/v2/team/app/blobs/uploads/",
            "Bearer realm=\"https://registry.test:5000/auth/token\",service=\"bulwark\",scope=\"repository:team/app:pull,push\"",
        ),
        (
            "DELETE",
            "/v2/team/app/manifests/latest",
            "Bearer realm=\"https://registry.test:5000/auth/token\",service=\"bulwark\",scope=\"repository:team/app:delete\"",
        ),
        (
            "GET",
            "/v2/_catalog",
            "Bearer realm=\"https://registry.test:5000/auth/token\",service=\"bulwark\",scope=\"registry:catalog:*\"",
        ),
    ];
    for (method, path, challenge) in cases {
        registry
            .send(
                call(method, path)
                    .anonymous()
                    .header("host", "registry.test:5000"),
            )
            .await
            .expect_error(401, "UNAUTHORIZED")
            .expect_header("www-authenticate", challenge);
    }
}

#[tokio::test]
async fn the_token_service_grants_what_is_asked_and_allowed() {
    let registry = team_registry().await;
    let granted = |token: &Value| -> Vec<(String, Vec<String>)> {
        let payload = token["token"]
            .as_str()
            .expect("token")
            .split('.')
            .nth(1)
            .expect("payload")
            .to_owned();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64"),
        )
        .expect("json");
        claims["access"]
            .as_array()
            .expect("access")
            .iter()
            .map(|entry| {
                let actions = entry["actions"]
                    .as_array()
                    .expect("actions")
                    .iter()
                    .map(|a| a.as_str().expect("action").to_owned())
                    .collect();
                (entry["name"].as_str().expect("name").to_owned(), actions)
            })
            .collect()
    };
    type Credentials<'a> = Option<(&'a str, &'a str)>;
    type Granted<'a> = Vec<(&'a str, Vec<&'a str>)>;
    let cases: Vec<(Credentials, &str, Granted)> = vec![
        (Some(("dev", PASSWORD)), "scope=repository:team/app:pull,push", vec![("team/app", vec!["pull", "push"])]),
        (Some(("dev", PASSWORD)), "scope=repository:team/app:pull,push,delete", vec![("team/app", vec!["pull", "push"])]),
        (Some(("rita", PASSWORD)), "scope=repository:team/app:pull,push", vec![("team/app", vec!["pull"])]),
        (Some(("eve", PASSWORD)), "scope=repository:team/app:pull", vec![("team/app", vec![])]),
        (Some(("eve", PASSWORD)), "scope=repository:open/app:pull,push", vec![("open/app", vec!["pull"])]),
        (None, "scope=repository:open/app:pull,push", vec![("open/app", vec!["pull"])]),
        (None, "scope=repository:team/app:pull", vec![("team/app", vec![])]),
        (
            Some(("mia", PASSWORD)),
            "service=bulwark&scope=repository:team/a:pull&scope=repository:team/b:delete%20repository:team/a:push",
            vec![("team/a", vec!["pull", "push"]), ("team/b", vec!["delete"])],
        ),
        (Some(("dev", PASSWORD)), "scope=repository:team/app:pull,fly", vec![("team/app", vec!["pull"])]),
        (Some((ADMIN, ADMIN_PASSWORD)), "scope=repository:nowhere/app:*", vec![("nowhere/app", vec!["pull", "push", "delete"])]),
    ];
    for (credentials, query, expected) in cases {
        let token = token(&registry, credentials, query).await;
        assert!(token["expires_in"].as_i64().is_some_and(|s| s > 0));
        assert!(token["issued_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
        assert_eq!(token["access_token"], token["token"]);
        let expected: Vec<(String, Vec<String>)> = expected
            .into_iter()
            .map(|(n, a)| (n.to_owned(), a.into_iter().map(str::to_owned).collect()))
            .collect();
        assert_eq!(granted(&token), expected, "{credentials:?} {query}");
    }
}

#[tokio::test]
async fn the_token_service_refuses_bad_requests() {
    let registry = team_registry().await;
    let cases = [
        (
            Some(("dev", "wrong password")),
            "scope=repository:team/app:pull",
            401,
            "invalid_grant",
        ),
        (
            Some(("nobody", PASSWORD)),
            "scope=repository:team/app:pull",
            401,
            "invalid_grant",
        ),
        (
            Some(("dev", PASSWORD)),
            "service=elsewhere&scope=repository:team/app:pull",
            400,
            "invalid_request",
        ),
        (
            Some(("dev", PASSWORD)),
            "scope=repository:Team/App:pull",
            400,
            "invalid_scope",
        ),
        (
            Some(("dev", PASSWORD)),
            "scope=image:team/app:pull",
            400,
            "invalid_scope",
        ),
    ];
    for (credentials, query, status, error) in cases {
        let mut request = call("GET", format!("/auth/token?{query}"));
        if let Some((user, password)) = credentials {
            request = request.header("authorization", basic(user, password));
        }
        let reply = registry.send(request).await;
        reply.expect(status);
        assert_eq!(reply.json()["error"], error, "{credentials:?} {query}");
    }
    // One scope too many: refused before any policy is looked up or a token signed.
    let query: Vec<String> = (0..=auth::scope::MAX_SCOPES)
        .map(|n| format!("scope=repository:team/app-{n}:pull"))
        .collect();
    let reply = registry
        .send(
            call("GET", format!("/auth/token?{}", query.join("&")))
                .header("authorization", basic("dev", PASSWORD)),
        )
        .await;
    reply.expect(400);
    assert_eq!(reply.json()["error"], "invalid_scope");
    registry
        .store
        .update_user(
            "dev",
            &UserUpdate {
                disabled: Some(true),
                ..UserUpdate::default()
            },
        )
        .await
        .expect("disable");
    registry
        .send(
            call("GET", "/auth/token?scope=repository:team/app:pull")
                .header("authorization", basic("dev", PASSWORD)),
        )
        .await
        .expect(401);
    registry
        .send(call("GET", "/v2/team/app/tags/list").header("authorization", basic("dev", PASSWORD)))
        .await
        .expect_error(401, "UNAUTHORIZED");
}

#[tokio::test]
async fn the_oauth2_form_issues_access_and_refresh_tokens() {
    let registry = team_registry().await;
    let form = |body: &str| {
        call("POST", "/auth/token")
            .anonymous()
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.as_bytes().to_vec())
    };
    let reply = registry
        .send(form(&format!(
            "grant_type=password&username=dev&password={}&service=bulwark&client_id=test&access_type=offline&scope=repository%3Ateam%2Fapp%3Apull",
            PASSWORD.replace(' ', "+")
        )))
        .await;
    reply.expect(200);
    let first = reply.json();
    let refresh = first["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    registry
        .send(call("GET", "/v2/team/app/tags/list").header("authorization", bearer(&first)))
        .await
        .expect_error(404, "NAME_UNKNOWN");

    let reply = registry
        .send(form(&format!("grant_type=refresh_token&refresh_token={refresh}&service=bulwark&scope=repository%3Ateam%2Fapp%3Apush")))
        .await;
    reply.expect(200);
    let second = reply.json();
    assert!(
        second.get("refresh_token").is_none(),
        "no new refresh token unless asked"
    );
    registry
        .send(call("POST", "/v2/team/app/blobs/uploads/").header("authorization", bearer(&second)))
        .await
        .expect(202);

    for (body, status, error) in [
        (
            "grant_type=password&username=dev&password=wrong",
            401,
            "invalid_grant",
        ),
        (
            "grant_type=refresh_token&refresh_token=garbage",
            401,
            "invalid_grant",
        ),
        (
            &format!(
                "grant_type=refresh_token&refresh_token={}",
                first["token"].as_str().expect("token")
            ),
            401,
            "invalid_grant",
        ),
        (
            "grant_type=client_credentials",
            400,
            "unsupported_grant_type",
        ),
        ("username=dev", 400, "invalid_request"),
    ] {
        let reply = registry.send(form(body)).await;
        reply.expect(status);
        assert_eq!(reply.json()["error"], error, "{body}");
    }

    // A refresh token stops working for a disabled account.
    registry
        .store
        .update_user(
            "dev",
            &UserUpdate {
                disabled: Some(true),
                ..UserUpdate::default()
            },
        )
        .await
        .expect("disable");
    let reply = registry
        .send(form(&format!(
            "grant_type=refresh_token&refresh_token={refresh}&scope=repository%3Ateam%2Fapp%3Apull"
        )))
        .await;
    reply.expect(401);
    assert_eq!(reply.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn tokens_on_v2_are_checked_for_scope_signature_and_subject() {
    let registry = team_registry().await;
    registry.push_image("team/app", "v1", "app").await;
    let pull_only = token(
        &registry,
        Some(("dev", PASSWORD)),
        "scope=repository:team/app:pull",
    )
    .await;
    registry
        .send(call("GET", "/v2/team/app/manifests/v1").header("authorization", bearer(&pull_only)))
        .await
        .expect(200);
    // dev may push, so a token without push is sent back for a wider one.
    registry
        .send(call("POST", "/v2/team/app/blobs/uploads/").header("authorization", bearer(&pull_only)))
        .await
        .expect_error(401, "UNAUTHORIZED")
        .expect_header(
            "www-authenticate",
            "Bearer realm=\"https://registry.test:5000/auth/token\",service=\"bulwark\",scope=\"repository:team/app:pull,push\",error=\"insufficient_scope\"",
        );
    // dev may never delete: a clear denial naming the rule.
    let reply = registry
        .send(
            call("DELETE", "/v2/team/app/manifests/v1").header("authorization", bearer(&pull_only)),
        )
        .await;
    reply.expect_error(403, "DENIED");
    assert_eq!(
        reply.json()["errors"][0]["message"],
        "role developer in project team does not allow delete"
    );

    let tampered = {
        let text = pull_only["token"].as_str().expect("token");
        let mut parts: Vec<&str> = text.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            br#"{"iss":"bulwark","sub":"user:admin","aud":"bulwark","exp":99999999999,"nbf":0,"iat":0,"jti":"x","access":[{"type":"repository","name":"team/app","actions":["delete"]}]}"#,
        );
        parts[1] = &forged;
        format!("Bearer {}", parts.join("."))
    };
    registry
        .send(call("DELETE", "/v2/team/app/manifests/v1").header("authorization", tampered))
        .await
        .expect_error(401, "UNAUTHORIZED");
    registry
        .send(
            call("GET", "/v2/team/app/manifests/v1").header("authorization", "Bearer not-a-token"),
        )
        .await
        .expect_error(401, "UNAUTHORIZED");
    let other = TestRegistry::start().await;
    let foreign = token(
        &other,
        Some((ADMIN, ADMIN_PASSWORD)),
        "scope=repository:team/app:pull",
    )
    .await;
    registry
        .send(call("GET", "/v2/team/app/manifests/v1").header("authorization", bearer(&foreign)))
        .await
        .expect_error(401, "UNAUTHORIZED");
    registry
        .send(call("GET", "/v2/team/app/manifests/v1").header("authorization", "Digest abc"))
        .await
        .expect_error(401, "UNAUTHORIZED");
}

#[tokio::test]
async fn the_role_matrix_over_http() {
    let registry = team_registry().await;
    registry.push_image("team/app", "v1", "team").await;
    registry.push_image("open/app", "v1", "open").await;
    // (user, project, [pull, push, delete])
    let matrix: &[(&str, [u16; 3], [u16; 3])] = &[
        ("olive", [200, 202, 202], [200, 202, 202]),
        ("mia", [200, 202, 202], [200, 202, 202]),
        ("dev", [200, 202, 403], [200, 202, 403]),
        ("rita", [200, 403, 403], [200, 403, 403]),
        ("eve", [403, 403, 403], [200, 403, 403]),
        ("anonymous", [401, 401, 401], [200, 401, 401]),
    ];
    for (user, team, open) in matrix {
        for (project, expected) in [("team", team), ("open", open)] {
            let with = |request: crate::support::Call| {
                if *user == "anonymous" {
                    request.anonymous()
                } else {
                    request.header("authorization", basic(user, PASSWORD))
                }
            };
            let pull = registry
                .send(with(call("GET", format!("/v2/{project}/app/manifests/v1"))))
                .await
                .status
                .as_u16();
            let push = registry
                .send(with(call(
                    "POST",
                    format!("/v2/{project}/app/blobs/uploads/"),
                )))
                .await
                .status
                .as_u16();
            let delete = registry
                .send(with(call(
                    "DELETE",
                    format!("/v2/{project}/app/blobs/{}", digest(b"layer of nothing")),
                )))
                .await
                .status
                .as_u16();
            // A permitted delete of a blob the repository does not hold is a 404, not a 202.
            let delete = if delete == 404 { 202 } else { delete };
            assert_eq!([pull, push, delete], *expected, "{user} on {project}");
        }
    }
}

#[tokio::test]
async fn robots_follow_grants_expiry_and_revocation() {
    let registry = team_registry().await;
    registry.push_image("team/app-web", "v1", "web").await;
    let robot_secret = secret::random();
    let robot = RobotRecord {
        name: "robot$team+ci".into(),
        project: Some("team".into()),
        description: None,
        grants: r#"[{"pattern":"team/app-*","actions":["pull"]}]"#.into(),
        expires_at: i64::MAX,
        revoked: false,
        created_at: 0,
        last_used_at: None,
    };
    registry
        .store
        .create_robot(&robot, &robot_secret.hash)
        .await
        .expect("robot");
    let as_robot = |request: crate::support::Call| {
        request.header(
            "authorization",
            basic("robot$team+ci", &robot_secret.plaintext),
        )
    };
    registry
        .send(as_robot(call("GET", "/v2/team/app-web/manifests/v1")))
        .await
        .expect(200);
    let reply = registry
        .send(as_robot(call("POST", "/v2/team/app-web/blobs/uploads/")))
        .await;
    reply.expect_error(403, "DENIED");
    assert_eq!(
        reply.json()["errors"][0]["message"],
        "no grant of robot robot$team+ci allows push here"
    );
    registry
        .send(as_robot(call("GET", "/v2/team/db/tags/list")))
        .await
        .expect_error(403, "DENIED");
    // The secret only works with the robot's own name.
    registry
        .send(
            call("GET", "/v2/team/app-web/manifests/v1")
                .header("authorization", basic("dev", &robot_secret.plaintext)),
        )
        .await
        .expect_error(401, "UNAUTHORIZED");
    let granted = token(
        &registry,
        Some(("robot$team+ci", &robot_secret.plaintext)),
        "scope=repository:team/app-web:pull,push",
    )
    .await;
    registry
        .send(
            call("GET", "/v2/team/app-web/manifests/v1").header("authorization", bearer(&granted)),
        )
        .await
        .expect(200);

    registry
        .store
        .revoke_robot("robot$team+ci")
        .await
        .expect("revoke");
    registry
        .send(as_robot(call("GET", "/v2/team/app-web/manifests/v1")))
        .await
        .expect_error(401, "UNAUTHORIZED");
    registry
        .send(
            call("GET", "/auth/token?scope=repository:team/app-web:pull").header(
                "authorization",
                basic("robot$team+ci", &robot_secret.plaintext),
            ),
        )
        .await
        .expect(401);
}

#[tokio::test]
async fn upload_sessions_belong_to_whoever_started_them() {
    let registry = team_registry().await;
    let location = {
        let reply = registry
            .send(
                call("POST", "/v2/team/app/blobs/uploads/")
                    .header("authorization", basic("dev", PASSWORD)),
            )
            .await;
        reply.expect(202);
        reply.header("location").to_owned()
    };
    registry
        .send(
            call("PATCH", &location)
                .header("authorization", basic("mia", PASSWORD))
                .octets(b"intruder"),
        )
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    registry
        .send(
            call("PATCH", &location)
                .header("authorization", basic("dev", PASSWORD))
                .octets(b"mine"),
        )
        .await
        .expect(202);
    registry
        .send(
            call("PUT", format!("{location}?digest={}", digest(b"mine")))
                .header("authorization", basic("dev", PASSWORD)),
        )
        .await
        .expect(201);
}

#[tokio::test]
async fn the_catalog_and_mounts_reveal_only_what_the_caller_may_pull() {
    let registry = team_registry().await;
    registry.push_image("team/app", "v1", "team").await;
    registry.push_image("open/app", "v1", "open").await;
    registry.push_image("secret/app", "v1", "secret").await;
    for (user, visible) in [
        ("eve", serde_json::json!(["open/app"])),
        ("dev", serde_json::json!(["open/app", "team/app"])),
    ] {
        let reply = registry
            .send(call("GET", "/v2/_catalog").header("authorization", basic(user, PASSWORD)))
            .await;
        assert_eq!(reply.json()["repositories"], visible, "{user}");
    }
    let all = registry.send(call("GET", "/v2/_catalog")).await.json();
    assert_eq!(
        all["repositories"],
        serde_json::json!(["open/app", "secret/app", "team/app"])
    );

    let layer = digest(b"layer of secret");
    registry
        .send(
            call(
                "POST",
                format!("/v2/team/copy/blobs/uploads/?mount={layer}&from=secret/app"),
            )
            .header("authorization", basic("dev", PASSWORD)),
        )
        .await
        .expect(202);
    let open_layer = digest(b"layer of open");
    registry
        .send(
            call(
                "POST",
                format!("/v2/team/copy/blobs/uploads/?mount={open_layer}&from=open/app"),
            )
            .header("authorization", basic("dev", PASSWORD)),
        )
        .await
        .expect(201);
}

#[tokio::test]
async fn a_burst_of_parallel_guesses_is_throttled_like_a_sequence() {
    // Each guess passes the lock check before any of them has failed; the ones still waiting
    // for argon2 when the lock comes are held instead of verified.
    let registry = team_registry().await;
    let guesses = (0..24).map(|n| {
        registry.send(
            call("GET", "/v2/")
                .header(
                    "authorization",
                    basic("rita", &format!("guess number {n:02}")),
                )
                .client_address([203, 0, 113, 5]),
        )
    });
    let replies = futures_util::future::join_all(guesses).await;
    let refused = replies.iter().filter(|r| r.status.as_u16() == 401).count();
    let held = replies.iter().filter(|r| r.status.as_u16() == 429).count();
    assert_eq!(refused + held, 24);
    // Five free failures, plus the ones verifying when the fifth was counted (two at a time).
    assert!(refused <= 7, "{refused} guesses were verified");
}

#[tokio::test]
async fn failed_logins_are_throttled_and_audited() {
    let registry = team_registry().await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let reply = registry
            .send(call("GET", "/v2/").header("authorization", basic("rita", "not her password")))
            .await;
        statuses.push(reply.status.as_u16());
    }
    // Five failures are free; the sixth locks the account (and the client) for a while.
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 401, 429]);
    let reply = registry
        .send(call("GET", "/v2/").header("authorization", basic("rita", PASSWORD)))
        .await;
    reply.expect_error(429, "TOOMANYREQUESTS");
    assert!(reply
        .header("retry-after")
        .parse::<u64>()
        .is_ok_and(|s| s >= 1));

    let failures = registry
        .store
        .audit(&AuditFilter {
            action: Some("login".into()),
            result: Some("failed".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(failures.len(), 6);
    assert_eq!(failures[0].event.principal, "user:rita");
}

#[tokio::test]
async fn pushes_deletes_and_denials_are_audited() {
    let registry = team_registry().await;
    let manifest = registry.push_image("team/app", "v1", "audited").await;
    registry
        .delete(format!("/v2/team/app/manifests/{}", manifest.digest))
        .await
        .expect(202);
    registry
        .send(
            call("DELETE", "/v2/team/app/manifests/v1")
                .header("authorization", basic("dev", PASSWORD)),
        )
        .await
        .expect_error(403, "DENIED");
    let events = registry
        .store
        .audit(&AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let summary: Vec<(String, String, String, String)> = events
        .iter()
        .rev()
        .map(|r| {
            (
                r.event.principal.clone(),
                r.event.action.clone(),
                r.event.target.clone(),
                r.event.result.clone(),
            )
        })
        .collect();
    let expected = vec![
        (
            "user:admin".to_owned(),
            "push".to_owned(),
            "team/app:v1".to_owned(),
            "allowed".to_owned(),
        ),
        (
            "user:admin".to_owned(),
            "delete".to_owned(),
            format!("team/app:{}", manifest.digest),
            "allowed".to_owned(),
        ),
        (
            "user:dev".to_owned(),
            "delete".to_owned(),
            "team/app".to_owned(),
            "denied".to_owned(),
        ),
    ];
    assert_eq!(summary, expected);
}

#[tokio::test]
async fn a_password_change_ends_refresh_tokens() {
    let registry = team_registry().await;
    let first = token(
        &registry,
        Some(("dev", PASSWORD)),
        "offline_token=true&scope=repository:team/app:pull",
    )
    .await;
    let refresh = first["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    let form = |refresh: &str| {
        call("POST", "/auth/token")
            .anonymous()
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=refresh_token&refresh_token={refresh}&scope=repository%3Ateam%2Fapp%3Apull").into_bytes())
    };
    registry.send(form(&refresh)).await.expect(200);
    let new_hash = auth::password::hash("a brand new password").expect("hash");
    registry
        .store
        .update_user(
            "dev",
            &UserUpdate {
                password_hash: Some(new_hash),
                ..UserUpdate::default()
            },
        )
        .await
        .expect("change the password");
    let reply = registry.send(form(&refresh)).await;
    reply.expect(401);
    assert_eq!(reply.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn a_configured_signing_key_rotates_without_invalidating_issued_tokens() {
    use registry::access::{Access, AccessSettings, PrivatePem};
    let registry = TestRegistry::start().await;
    let before = token(
        &registry,
        Some((ADMIN, ADMIN_PASSWORD)),
        "scope=repository:team/app:pull",
    )
    .await;
    let kid = |token: &Value| -> String {
        let header = token["token"]
            .as_str()
            .expect("token")
            .split('.')
            .next()
            .expect("header")
            .to_owned();
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .expect("base64"),
        )
        .expect("json");
        header["kid"].as_str().expect("kid").to_owned()
    };
    let (configured, pem) = auth::token::SigningKey::generate().expect("key");
    let rotated = Access::open(
        registry.store.clone(),
        AccessSettings {
            signing_key: Some(PrivatePem(pem)),
            ..AccessSettings::default()
        },
    )
    .await
    .expect("open with a configured key");
    let admin = auth::policy::Principal::User {
        name: ADMIN.into(),
        admin: true,
        disabled: false,
    };
    let issued = rotated
        .issue(&admin, None, &[], false)
        .await
        .expect("issue");
    let header = issued
        .access
        .token
        .split('.')
        .next()
        .expect("header")
        .to_owned();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .expect("base64"),
    )
    .expect("json");
    assert_eq!(header["kid"], configured.kid(), "the configured key signs");
    assert_ne!(kid(&before), configured.kid());
    rotated
        .verify(before["token"].as_str().expect("token"), false)
        .await
        .expect("a token of the earlier key still verifies");
    assert_eq!(rotated.jwks()["keys"].as_array().map(Vec::len), Some(2));

    let broken = Access::open(
        registry.store.clone(),
        AccessSettings {
            signing_key: Some(PrivatePem("not a key".into())),
            ..AccessSettings::default()
        },
    )
    .await;
    assert!(broken.is_err(), "a broken configured key stops the start");
}

#[tokio::test]
async fn the_public_keys_are_published_as_jwks() {
    let registry = TestRegistry::start().await;
    let reply = registry.send(call("GET", "/auth/jwks").anonymous()).await;
    reply.expect(200);
    let keys = reply.json()["keys"].clone();
    assert_eq!(keys.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (
            keys[0]["kty"].as_str(),
            keys[0]["crv"].as_str(),
            keys[0]["alg"].as_str()
        ),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    assert!(keys[0].get("d").is_none(), "never the private part");
}

#[tokio::test]
async fn an_expired_robot_is_refused_everywhere() {
    let registry = team_registry().await;
    let robot_secret = secret::random();
    let robot = RobotRecord {
        name: "robot$team+old".into(),
        project: Some("team".into()),
        description: None,
        grants: r#"[{"pattern":"team/**","actions":["pull","push"]}]"#.into(),
        expires_at: 1,
        revoked: false,
        created_at: 0,
        last_used_at: None,
    };
    registry
        .store
        .create_robot(&robot, &robot_secret.hash)
        .await
        .expect("robot");
    let credentials = basic("robot$team+old", &robot_secret.plaintext);
    registry
        .send(call("GET", "/v2/team/app/tags/list").header("authorization", credentials.clone()))
        .await
        .expect_error(401, "UNAUTHORIZED");
    registry
        .send(
            call("GET", "/auth/token?scope=repository:team/app:pull")
                .header("authorization", credentials),
        )
        .await
        .expect(401);
}

#[tokio::test]
async fn a_store_that_is_down_answers_503_with_retry_after_never_a_failed_login() {
    let registry = team_registry().await;
    let form = |body: String| {
        call("POST", "/auth/token")
            .anonymous()
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.into_bytes())
    };
    let reply = registry
        .send(form(format!(
            "grant_type=password&username=dev&password={}&service=bulwark&access_type=offline&scope=repository%3Ateam%2Fapp%3Apull",
            PASSWORD.replace(' ', "+")
        )))
        .await;
    reply.expect(200);
    let granted = reply.json();
    let refresh = granted["refresh_token"].as_str().expect("a refresh token");

    // A closed pool fails every query as `Unavailable`, as a database that went away does.
    registry.store.close().await;
    let cases = [
        (
            "a token for Basic credentials",
            call(
                "GET",
                "/auth/token?service=bulwark&scope=repository:team/app:pull",
            )
            .header("authorization", basic("dev", PASSWORD)),
        ),
        (
            "a token for a refresh token",
            form(format!(
                "grant_type=refresh_token&refresh_token={refresh}&service=bulwark"
            )),
        ),
        (
            "/v2 with Basic credentials",
            call("GET", "/v2/team/app/tags/list").header("authorization", basic("dev", PASSWORD)),
        ),
        (
            "/v2 with a token",
            call("GET", "/v2/team/app/tags/list").header("authorization", bearer(&granted)),
        ),
        (
            "the admin API with Basic credentials",
            call("GET", "/api/v1/users"),
        ),
        (
            "the admin API with a token",
            call("GET", "/api/v1/whoami").header("authorization", bearer(&granted)),
        ),
    ];
    for (what, request) in cases {
        let reply = registry.send(request).await;
        assert_eq!(
            reply.status.as_u16(),
            503,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.header("retry-after"), "5", "{what}");
    }
    let problem = registry.send(call("GET", "/api/v1/users")).await;
    assert_eq!(problem.header("content-type"), "application/problem+json");
    assert_eq!(problem.json()["status"], 503);
    let oauth = registry
        .send(
            call("GET", "/auth/token?service=bulwark")
                .header("authorization", basic("dev", PASSWORD)),
        )
        .await;
    assert_eq!(oauth.json()["error"], "temporarily_unavailable");
    registry
        .send(call("GET", "/v2/team/app/tags/list").header("authorization", bearer(&granted)))
        .await
        .expect_error(503, "UNKNOWN");

    // Credentials that cannot be checked are not wrong: no 401, and no throttling.
    for _ in 0..8 {
        let reply = registry
            .send(call("GET", "/v2/").header("authorization", basic("rita", "not her password")))
            .await;
        assert_eq!(
            reply.status.as_u16(),
            503,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
}

/// A first start answers before its admin account exists (hashing its password takes a while):
/// a login arriving meanwhile waits for the account instead of failing with a 401.
#[tokio::test]
async fn a_login_during_the_first_start_waits_for_the_admin_account() {
    let (registry, created) = TestRegistry::first_start().await;
    let login = call(
        "GET",
        "/auth/token?service=bulwark&scope=repository:team/app:push",
    )
    .header("authorization", basic(ADMIN, ADMIN_PASSWORD));
    // The login is polled first, so it asks before the account exists.
    let (reply, ()) = tokio::join!(registry.send(login), async {
        registry.create_admin().await;
        created.send_replace(true);
    });
    reply.expect(200);
    assert!(reply.json()["token"].is_string());
    registry
        .send(call("GET", "/v2/").header("authorization", basic(ADMIN, ADMIN_PASSWORD)))
        .await
        .expect(200);
}

#[tokio::test]
async fn logins_answer_503_when_the_admin_account_cannot_be_created() {
    let (registry, created) = TestRegistry::first_start().await;
    drop(created);
    let reply = registry
        .send(call("GET", "/v2/").header("authorization", basic(ADMIN, ADMIN_PASSWORD)))
        .await;
    reply.expect(503);
}

#[tokio::test]
async fn a_refresh_token_dies_with_the_access_token_it_came_from() {
    let registry = team_registry().await;
    let pat = access_token(&registry, "dev", "0123456789abcdef0123456789abcdef").await;
    let first = token(
        &registry,
        Some(("dev", &pat)),
        "offline_token=true&scope=repository:team/app:pull",
    )
    .await;
    assert_eq!(claims(&first)["cred"], "token", "{first}");
    let refresh_token = first["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    let reply = refresh(&registry, &refresh_token, true).await;
    reply.expect(200);
    let second = reply.json();
    assert_eq!(
        claims(&second)["cred"],
        "token",
        "a refreshed token still says it stems from an access token"
    );
    let renewed = second["refresh_token"]
        .as_str()
        .expect("a new refresh token")
        .to_owned();
    refresh(&registry, &renewed, false).await.expect(200);

    assert!(registry
        .store
        .revoke_access_token("dev", "0123456789abcdef0123456789abcdef")
        .await
        .expect("revoke"));
    for (which, refresh_token) in [("first", &refresh_token), ("renewed", &renewed)] {
        let reply = refresh(&registry, refresh_token, false).await;
        reply.expect(401);
        assert_eq!(reply.json()["error"], "invalid_grant", "{which}");
    }
    // The password's refresh tokens are another credential's, and live on.
    let by_password = token(
        &registry,
        Some(("dev", PASSWORD)),
        "offline_token=true&scope=repository:team/app:pull",
    )
    .await;
    assert_eq!(claims(&by_password)["cred"], "password");
    let refresh_token = by_password["refresh_token"]
        .as_str()
        .expect("a refresh token");
    refresh(&registry, refresh_token, false).await.expect(200);
}

#[tokio::test]
async fn a_robot_refresh_token_dies_when_its_secret_is_rotated() {
    let registry = team_registry().await;
    let secret = team_robot(&registry).await;
    let granted = token(
        &registry,
        Some(("robot$team+ci", &secret)),
        "offline_token=true&scope=repository:team/app:pull",
    )
    .await;
    assert_eq!(claims(&granted)["cred"], "robot");
    let refresh_token = granted["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    let reply = refresh(&registry, &refresh_token, true).await;
    reply.expect(200);
    let renewed = reply.json()["refresh_token"]
        .as_str()
        .expect("a new refresh token")
        .to_owned();

    let rotated = secret::random();
    assert!(registry
        .store
        .rotate_robot("robot$team+ci", &rotated.hash, None)
        .await
        .expect("rotate"));
    for refresh_token in [&refresh_token, &renewed] {
        let reply = refresh(&registry, refresh_token, false).await;
        reply.expect(401);
        assert_eq!(reply.json()["error"], "invalid_grant");
    }
    let fresh = token(
        &registry,
        Some(("robot$team+ci", &rotated.plaintext)),
        "offline_token=true&scope=repository:team/app:pull",
    )
    .await;
    let refresh_token = fresh["refresh_token"].as_str().expect("a refresh token");
    refresh(&registry, refresh_token, false).await.expect(200);
}

#[tokio::test]
async fn bad_secrets_in_an_accounts_name_do_not_lock_it_out() {
    let registry = team_registry().await;
    let secret = team_robot(&registry).await;
    let pat = access_token(&registry, "dev", "0123456789abcdef0123456789abcdef").await;
    // One attacker address per name, each sending enough bad secrets for a long lock (the
    // doubling reaches minutes), so what is tested is the name's lock, not the address's.
    for (name, attacker) in [("robot$team+ci", [192, 0, 2, 7]), ("dev", [192, 0, 2, 8])] {
        let mut statuses = Vec::new();
        for _ in 0..14 {
            let wrong = secret::random().plaintext;
            let reply = registry
                .send(
                    call("GET", "/v2/")
                        .header("authorization", basic(name, &wrong))
                        .client_address(attacker),
                )
                .await;
            statuses.push(reply.status.as_u16());
        }
        assert_eq!(
            statuses.last(),
            Some(&429),
            "the attacker's own address is throttled: {statuses:?}"
        );
    }
    // Neither the robot nor the user is locked out from anywhere else.
    for (name, credential) in [
        ("robot$team+ci", secret.as_str()),
        ("dev", pat.as_str()),
        ("dev", PASSWORD),
    ] {
        registry
            .send(
                call("GET", "/v2/")
                    .header("authorization", basic(name, credential))
                    .client_address([10, 0, 0, 1]),
            )
            .await
            .expect(200);
    }
    // The audit log names each failure after the principal its name claims.
    let failures = registry
        .store
        .audit(&AuditFilter {
            action: Some("login".into()),
            result: Some("failed".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let principals: std::collections::BTreeSet<&str> = failures
        .iter()
        .map(|record| record.event.principal.as_str())
        .collect();
    assert_eq!(
        principals,
        ["robot:robot$team+ci", "user:dev"].into_iter().collect()
    );
}

#[tokio::test]
async fn password_failures_from_strangers_do_not_lock_out_a_known_client() {
    let registry = team_registry().await;
    let home = [10, 0, 0, 1];
    registry
        .send(
            call("GET", "/v2/")
                .header("authorization", basic("rita", PASSWORD))
                .client_address(home),
        )
        .await
        .expect(200);
    for _ in 0..8 {
        registry
            .send(
                call("GET", "/v2/")
                    .header("authorization", basic("rita", "a wrong guess at it"))
                    .client_address([192, 0, 2, 7]),
            )
            .await;
    }
    // A new address meets the account's lock...
    registry
        .send(
            call("GET", "/v2/")
                .header("authorization", basic("rita", PASSWORD))
                .client_address([10, 0, 0, 2]),
        )
        .await
        .expect_error(429, "TOOMANYREQUESTS");
    // ...but where rita logged in before, she still can.
    registry
        .send(
            call("GET", "/v2/")
                .header("authorization", basic("rita", PASSWORD))
                .client_address(home),
        )
        .await
        .expect(200);
}

#[tokio::test]
async fn an_expired_token_continues_an_upload_only_while_its_principal_may_push() {
    use registry::access::{Access, AccessSettings, Credential};
    let registry = team_registry().await;
    let location = {
        let reply = registry
            .send(
                call("POST", "/v2/team/app/blobs/uploads/")
                    .header("authorization", basic("dev", PASSWORD)),
            )
            .await;
        reply.expect(202);
        reply.header("location").to_owned()
    };
    // Tokens of the registry's own keys that have expired the moment they are issued.
    let expired = Access::open(
        registry.store.clone(),
        AccessSettings {
            token_lifetime: std::time::Duration::ZERO,
            ..AccessSettings::default()
        },
    )
    .await
    .expect("open access control");
    let dev = auth::policy::Principal::User {
        name: "dev".into(),
        admin: false,
        disabled: false,
    };
    let scope = auth::scope::Scope::parse("repository:team/app:pull,push").expect("scope");
    let credential = Credential::Password {
        fingerprint: "0123456789abcdef01234567".into(),
    };
    let issued = expired
        .issue(&dev, Some(&credential), &[scope], false)
        .await
        .expect("issue");
    let token = format!("Bearer {}", issued.access.token);
    registry
        .send(call("GET", "/v2/team/app/tags/list").header("authorization", &token))
        .await
        .expect_error(401, "UNAUTHORIZED");
    let patch = |bytes: &'static [u8], start: usize| {
        call("PATCH", &location)
            .header("authorization", &token)
            .header(
                "content-range",
                format!("{start}-{}", start + bytes.len() - 1),
            )
            .octets(bytes)
    };
    registry.send(patch(b"first", 0)).await.expect(202);

    // Demoted to reader: no more pushing, whatever the token said.
    registry
        .store
        .set_member("team", "dev", "reader")
        .await
        .expect("demote");
    registry
        .send(patch(b"second", 5))
        .await
        .expect_error(403, "DENIED");
    registry
        .store
        .set_member("team", "dev", "developer")
        .await
        .expect("restore");
    registry.send(patch(b"second", 5)).await.expect(202);

    // Disabled: the session stops too.
    registry
        .store
        .update_user(
            "dev",
            &UserUpdate {
                disabled: Some(true),
                ..UserUpdate::default()
            },
        )
        .await
        .expect("disable");
    let reply = registry.send(patch(b"third", 11)).await;
    reply.expect_error(403, "DENIED");
    assert_eq!(reply.json()["errors"][0]["message"], "user dev is disabled");
}

#[tokio::test]
async fn a_client_asking_for_exactly_the_challenged_scopes_can_mount() {
    let registry = team_registry().await;
    registry.push_image("team/app", "v1", "team").await;
    let layer = digest(b"layer of team");
    let mount = format!("/v2/team/copy/blobs/uploads/?mount={layer}&from=team/app");
    let reply = registry.send(call("POST", &mount).anonymous()).await;
    reply.expect_error(401, "UNAUTHORIZED").expect_header(
        "www-authenticate",
        "Bearer realm=\"https://registry.test:5000/auth/token\",service=\"bulwark\",scope=\"repository:team/copy:pull,push repository:team/app:pull\"",
    );
    // As python-dxf and the conformance suite do: one scope parameter per challenged scope.
    let challenged = reply.header("www-authenticate").to_owned();
    let scopes = challenged
        .split("scope=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a scope in the challenge");
    let query: Vec<String> = scopes
        .split(' ')
        .map(|scope| format!("scope={scope}"))
        .collect();
    let token = token(&registry, Some(("dev", PASSWORD)), &query.join("&")).await;
    registry
        .send(call("POST", &mount).header("authorization", bearer(&token)))
        .await
        .expect(201);
    // Mounting from the repository itself names it once.
    registry
        .send(
            call(
                "POST",
                format!("/v2/team/copy/blobs/uploads/?mount={layer}&from=team/copy"),
            )
            .anonymous(),
        )
        .await
        .expect_header(
            "www-authenticate",
            "Bearer realm=\"https://registry.test:5000/auth/token\",service=\"bulwark\",scope=\"repository:team/copy:pull,push\"",
        );
}

#[tokio::test]
async fn a_request_without_exactly_one_host_is_refused_and_the_realm_never_trusts_it() {
    let registry = TestRegistry::start().await;
    for call in [
        call("GET", "/v2/").header("host", ""),
        call("GET", "/v2/")
            .header("host", "registry.test")
            .header("host", "evil.example"),
        call("GET", "/v2/").header("host", "evil.example/\",x=\""),
        call("GET", "/auth/token").header("host", ""),
    ] {
        registry.send(call).await.expect_error(400, "UNSUPPORTED");
    }
    // With an external URL configured, the realm is built from it whatever Host says.
    let registry = TestRegistry::with_settings(AccessSettings {
        external_url: Some("https://registry.example.com".into()),
        ..AccessSettings::default()
    })
    .await;
    registry
        .send(
            call("GET", "/v2/team/app/manifests/latest")
                .anonymous()
                .header("host", "evil.example"),
        )
        .await
        .expect_error(401, "UNAUTHORIZED")
        .expect_header(
            "www-authenticate",
            "Bearer realm=\"https://registry.example.com/auth/token\",service=\"bulwark\",scope=\"repository:team/app:pull\"",
        );
}

#[tokio::test]
async fn a_token_mounts_only_from_repositories_it_grants_pull_on() {
    let registry = team_registry().await;
    registry.push_image("team/app", "v1", "team").await;
    let layer = digest(b"layer of team");
    let mount = format!("/v2/team/copy/blobs/uploads/?mount={layer}&from=team/app");
    // dev may pull team/app, but this token is for team/copy alone: no mount, an upload.
    let narrow = token(
        &registry,
        Some(("dev", PASSWORD)),
        "scope=repository:team/copy:pull,push",
    )
    .await;
    registry
        .send(call("POST", &mount).header("authorization", bearer(&narrow)))
        .await
        .expect(202);
    // What clients ask for when they mount: pull on the source in the same token.
    let with_source = token(
        &registry,
        Some(("dev", PASSWORD)),
        "scope=repository:team/copy:pull,push&scope=repository:team/app:pull",
    )
    .await;
    registry
        .send(call("POST", &mount).header("authorization", bearer(&with_source)))
        .await
        .expect(201);
}

#[tokio::test]
async fn token_requests_over_a_clients_rate_get_429_with_retry_after() {
    let registry = TestRegistry::with_limits(registry::Limits {
        token_requests_per_second: 1,
        ..crate::support::test_limits()
    })
    .await;
    let request = |client: [u8; 4]| {
        call("GET", "/auth/token?service=bulwark")
            .anonymous()
            .client_address(client)
    };
    // A burst of five seconds' worth, then the rate.
    for _ in 0..registry::rate::BURST_SECONDS {
        registry.send(request([198, 51, 100, 7])).await.expect(200);
    }
    let refused = registry.send(request([198, 51, 100, 7])).await;
    refused.expect(429).expect_header("retry-after", "1");
    assert_eq!(refused.json()["error"], "slow_down");
    let form = call("POST", "/auth/token")
        .anonymous()
        .client_address([198, 51, 100, 7])
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=password&service=bulwark&client_id=test&username=a&password=b");
    registry.send(form).await.expect(429);
    // Another client is not held up.
    registry.send(request([198, 51, 100, 8])).await.expect(200);
}
