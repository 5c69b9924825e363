//! Revocation that takes effect at once: a registry token stops working on `/v2` when its
//! user is disabled, its robot revoked or rotated, the personal access token or refresh token
//! it came from revoked, or the key that signed it retired. A change made through this
//! replica's admin API stops the token on the next request; one recorded by another replica
//! (written to the store directly here) within the refresh interval. Refresh tokens are
//! listed and revoked one at a time.

use std::time::{Duration, Instant};

use crate::support::{call, Reply, TestRegistry, ADMIN, REVOCATION_REFRESH};
use auth::secret;
use base64::Engine as _;
use metadata::identity::{
    AccessTokenRecord, AuditFilter, IdentityStore as _, ProjectRecord, RobotRecord, UserRecord,
    UserUpdate,
};
use serde_json::{json, Value};

const PASSWORD: &str = "a long enough password";
const PAT_ID: &str = "0123456789abcdef0123456789abcdef";
/// How long a revocation may take to arrive in these tests: generous, as the machine may be
/// busy; the registry reads revocations every `REVOCATION_REFRESH`.
const ARRIVAL: Duration = Duration::from_secs(15);

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A registry with private project `team`, developer `dev` (with a personal access token
/// `PAT_ID`) and robot `robot$team+ci` pushing and pulling `team/*`; the PAT's and the
/// robot's secrets.
async fn team_registry() -> (TestRegistry, String, String) {
    let registry = TestRegistry::start().await;
    let store = &registry.store;
    store
        .create_user(&UserRecord {
            name: "dev".into(),
            password_hash: auth::password::hash(PASSWORD).expect("hash"),
            admin: false,
            disabled: false,
            created_at: 0,
        })
        .await
        .expect("create user");
    store
        .create_project(&ProjectRecord {
            name: "team".into(),
            public: false,
            created_at: 0,
        })
        .await
        .expect("create project");
    store
        .set_member("team", "dev", "developer")
        .await
        .expect("member");
    let pat = secret::random();
    store
        .create_access_token(
            &AccessTokenRecord {
                id: PAT_ID.into(),
                user: "dev".into(),
                description: "laptop".into(),
                expires_at: None,
                revoked: false,
                created_at: 0,
                last_used_at: None,
            },
            &pat.hash,
        )
        .await
        .expect("create the access token");
    let robot = secret::random();
    store
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
            &robot.hash,
        )
        .await
        .expect("create the robot");
    (registry, pat.plaintext, robot.plaintext)
}

/// A token answer of the token service for `user` with `password`, pulling `team/app`.
async fn token(registry: &TestRegistry, user: &str, password: &str, offline: bool) -> Value {
    let offline = if offline { "&offline_token=true" } else { "" };
    let reply = registry
        .send(
            call(
                "GET",
                format!("/auth/token?service=bulwark&scope=repository:team/app:pull{offline}"),
            )
            .header("authorization", basic(user, password)),
        )
        .await;
    reply.expect(200);
    reply.json()
}

fn bearer(answer: &Value) -> String {
    format!("Bearer {}", answer["token"].as_str().expect("a token"))
}

/// `GET /v2/team/app/tags/list` with the token: 404 (no such repository yet) once the token
/// is honoured, 401 once it is not.
async fn pull(registry: &TestRegistry, authorization: &str) -> Reply {
    registry
        .send(call("GET", "/v2/team/app/tags/list").header("authorization", authorization))
        .await
}

#[track_caller]
fn honoured(reply: &Reply) {
    reply.expect_error(404, "NAME_UNKNOWN");
}

/// Waits until the token is refused with 401 `invalid_token`, at most `ARRIVAL`; the reply.
async fn refused_eventually(registry: &TestRegistry, authorization: &str) -> Reply {
    let start = Instant::now();
    loop {
        let reply = pull(registry, authorization).await;
        if reply.status.as_u16() != 404 || start.elapsed() > ARRIVAL {
            reply.expect_error(401, "UNAUTHORIZED");
            assert!(
                reply.header("www-authenticate").contains("invalid_token"),
                "{}",
                reply.header("www-authenticate")
            );
            return reply;
        }
        tokio::time::sleep(REVOCATION_REFRESH / 2).await;
    }
}

async fn admin_api(registry: &TestRegistry, method: &str, uri: &str, body: Option<Value>) -> Reply {
    let mut request = call(method, uri);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes());
    }
    registry.send(request).await
}

#[tokio::test]
async fn a_revocation_recorded_by_another_replica_stops_tokens_within_the_refresh_interval() {
    // Each case: whose token, and what another replica records (straight into the store).
    enum Change {
        DisableUser,
        RevokeAccessToken,
        RevokeRobot,
        RotateRobot,
    }
    for change in [
        Change::DisableUser,
        Change::RevokeAccessToken,
        Change::RevokeRobot,
        Change::RotateRobot,
    ] {
        let (registry, pat, robot) = team_registry().await;
        let by_password = bearer(&token(&registry, "dev", PASSWORD, false).await);
        let by_pat = bearer(&token(&registry, "dev", &pat, false).await);
        let by_robot = bearer(&token(&registry, "robot$team+ci", &robot, false).await);
        for token in [&by_password, &by_pat, &by_robot] {
            honoured(&pull(&registry, token).await);
        }
        let store = &registry.store;
        let (ended, kept): (Vec<String>, Vec<String>) = match change {
            Change::DisableUser => {
                let disable = UserUpdate {
                    disabled: Some(true),
                    ..UserUpdate::default()
                };
                store.update_user("dev", &disable).await.expect("disable");
                (vec![by_password, by_pat], vec![by_robot])
            }
            Change::RevokeAccessToken => {
                assert!(store
                    .revoke_access_token("dev", PAT_ID)
                    .await
                    .expect("revoke"));
                (vec![by_pat], vec![by_password, by_robot])
            }
            Change::RevokeRobot => {
                assert!(store.revoke_robot("robot$team+ci").await.expect("revoke"));
                (vec![by_robot], vec![by_password, by_pat])
            }
            Change::RotateRobot => {
                let rotated = secret::random();
                assert!(store
                    .rotate_robot("robot$team+ci", &rotated.hash, None)
                    .await
                    .expect("rotate"));
                let fresh =
                    bearer(&token(&registry, "robot$team+ci", &rotated.plaintext, false).await);
                honoured(&pull(&registry, &fresh).await);
                (vec![by_robot], vec![by_password, by_pat, fresh])
            }
        };
        for token in &ended {
            refused_eventually(&registry, token).await;
        }
        for token in &kept {
            honoured(&pull(&registry, token).await);
        }
    }
}

#[tokio::test]
async fn a_revocation_through_the_admin_api_stops_tokens_on_the_next_request() {
    let (registry, pat, robot) = team_registry().await;
    let by_pat = bearer(&token(&registry, "dev", &pat, false).await);
    let by_robot = bearer(&token(&registry, "robot$team+ci", &robot, false).await);
    honoured(&pull(&registry, &by_pat).await);
    honoured(&pull(&registry, &by_robot).await);

    admin_api(
        &registry,
        "DELETE",
        &format!("/api/v1/users/dev/tokens/{PAT_ID}"),
        None,
    )
    .await
    .expect(204);
    let reply = pull(&registry, &by_pat).await;
    reply.expect_error(401, "UNAUTHORIZED");
    assert!(
        String::from_utf8_lossy(&reply.body).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    admin_api(&registry, "DELETE", "/api/v1/projects/team/robots/ci", None)
        .await
        .expect(204);
    pull(&registry, &by_robot)
        .await
        .expect_error(401, "UNAUTHORIZED");

    // A password login's token ends when the account is disabled, and stays ended when it
    // is enabled again: a new login gets a new token.
    let by_password = bearer(&token(&registry, "dev", PASSWORD, false).await);
    honoured(&pull(&registry, &by_password).await);
    for disabled in [true, false] {
        admin_api(
            &registry,
            "PATCH",
            "/api/v1/users/dev",
            Some(json!({ "disabled": disabled })),
        )
        .await
        .expect(200);
    }
    pull(&registry, &by_password)
        .await
        .expect_error(401, "UNAUTHORIZED");
    honoured(
        &pull(
            &registry,
            &bearer(&token(&registry, "dev", PASSWORD, false).await),
        )
        .await,
    );
}

#[tokio::test]
async fn a_revoked_token_does_not_continue_an_upload_session() {
    let (registry, pat, _) = team_registry().await;
    let reply = registry
        .send(
            call(
                "GET",
                "/auth/token?service=bulwark&scope=repository:team/app:pull,push",
            )
            .header("authorization", basic("dev", &pat)),
        )
        .await;
    reply.expect(200);
    let by_pat = bearer(&reply.json());
    let started = registry
        .send(call("POST", "/v2/team/app/blobs/uploads/").header("authorization", &by_pat))
        .await;
    started.expect(202);
    let location = started.header("location").to_owned();
    assert!(registry
        .store
        .revoke_access_token("dev", PAT_ID)
        .await
        .expect("revoke"));
    let start = Instant::now();
    loop {
        let reply = registry
            .send(
                call("PATCH", location.clone())
                    .header("authorization", &by_pat)
                    .octets(b"bytes"),
            )
            .await;
        if reply.status.as_u16() == 401 {
            break;
        }
        reply.expect(202);
        assert!(start.elapsed() < ARRIVAL, "the revoked token kept pushing");
        tokio::time::sleep(REVOCATION_REFRESH / 2).await;
    }
}

#[tokio::test]
async fn refresh_tokens_are_listed_and_revoked_one_at_a_time() {
    let (registry, _, _) = team_registry().await;
    let laptop = token(&registry, "dev", PASSWORD, true).await;
    let desktop = token(&registry, "dev", PASSWORD, true).await;
    let dev = basic("dev", PASSWORD);
    let list = |authorization: String| {
        let registry = &registry;
        async move {
            let reply = registry
                .send(
                    call("GET", "/api/v1/users/dev/refresh-tokens")
                        .header("authorization", authorization),
                )
                .await;
            reply.expect(200);
            reply.json()["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|item| {
                    format!(
                        "{} {}",
                        item["credential"].as_str().expect("credential"),
                        if item["revoked"] == json!(true) {
                            "revoked"
                        } else {
                            "live"
                        }
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(dev.clone()).await,
        vec!["password live", "password live"]
    );
    let admin_view = admin_api(&registry, "GET", "/api/v1/users/dev/refresh-tokens", None).await;
    admin_view.expect(200);
    let ids: Vec<String> = admin_view.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    let text = admin_view.json().to_string();
    for answer in [&laptop, &desktop] {
        let refresh = answer["refresh_token"].as_str().expect("a refresh token");
        assert!(
            !text.contains(refresh),
            "the tokens themselves are never listed"
        );
    }

    // Which id is the laptop's: the refresh token's jti.
    let jti = |answer: &Value| {
        let jwt = answer["refresh_token"].as_str().expect("a refresh token");
        let payload = jwt.split('.').nth(1).expect("a JWT");
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64"),
        )
        .expect("json");
        claims["jti"].as_str().expect("jti").to_owned()
    };
    let laptop_id = jti(&laptop);
    assert!(ids.contains(&laptop_id), "{ids:?} {laptop_id}");

    // An access token the laptop's refresh token gave.
    let exchange = |refresh_token: String| {
        let registry = &registry;
        async move {
            registry
                .send(
                    call("POST", "/auth/token")
                        .anonymous()
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("grant_type=refresh_token&refresh_token={refresh_token}&service=bulwark&scope=repository%3Ateam%2Fapp%3Apull").into_bytes()),
                )
                .await
        }
    };
    let laptop_refresh = laptop["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let desktop_refresh = desktop["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let exchanged = exchange(laptop_refresh.clone()).await;
    exchanged.expect(200);
    let from_laptop = bearer(&exchanged.json());
    honoured(&pull(&registry, &from_laptop).await);

    // Another user may neither list nor revoke dev's.
    registry
        .store
        .create_user(&UserRecord {
            name: "eve".into(),
            password_hash: auth::password::hash(PASSWORD).expect("hash"),
            admin: false,
            disabled: false,
            created_at: 0,
        })
        .await
        .expect("create user");
    let eve = basic("eve", PASSWORD);
    registry
        .send(call("GET", "/api/v1/users/dev/refresh-tokens").header("authorization", eve.clone()))
        .await
        .expect(403);
    registry
        .send(
            call(
                "DELETE",
                format!("/api/v1/users/dev/refresh-tokens/{laptop_id}"),
            )
            .header("authorization", eve),
        )
        .await
        .expect(403);

    registry
        .send(
            call(
                "DELETE",
                format!("/api/v1/users/dev/refresh-tokens/{laptop_id}"),
            )
            .header("authorization", dev.clone()),
        )
        .await
        .expect(204);
    let mut states = list(dev.clone()).await;
    states.sort();
    assert_eq!(states, vec!["password live", "password revoked"]);
    let refused = exchange(laptop_refresh).await;
    refused.expect(401);
    assert_eq!(refused.json()["error"], "invalid_grant");
    pull(&registry, &from_laptop)
        .await
        .expect_error(401, "UNAUTHORIZED");
    exchange(desktop_refresh).await.expect(200);
    admin_api(
        &registry,
        "DELETE",
        "/api/v1/users/dev/refresh-tokens/unknown",
        None,
    )
    .await
    .expect(404);

    let audited = registry
        .store
        .audit(&AuditFilter {
            action: Some("refresh_token.revoke".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let results: Vec<(String, String)> = audited
        .iter()
        .map(|record| (record.event.principal.clone(), record.event.result.clone()))
        .collect();
    assert_eq!(
        results,
        vec![
            (format!("user:{ADMIN}"), "failed".to_owned()),
            ("user:dev".to_owned(), "allowed".to_owned()),
            ("user:eve".to_owned(), "denied".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_retired_signing_key_stops_verifying_and_the_signing_key_is_replaced() {
    let (registry, _, _) = team_registry().await;
    let before = bearer(&token(&registry, "dev", PASSWORD, false).await);
    honoured(&pull(&registry, &before).await);
    let listed = admin_api(&registry, "GET", "/api/v1/signing-keys", None).await;
    listed.expect(200);
    let keys = listed.json()["items"].clone();
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys[0]["state"], "signing");
    let first = keys[0]["kid"].as_str().expect("kid").to_owned();

    let retired = admin_api(
        &registry,
        "POST",
        &format!("/api/v1/signing-keys/{first}/retire"),
        None,
    )
    .await;
    retired.expect(200);
    let answer = retired.json();
    assert_eq!(answer["retired"], first.as_str());
    let second = answer["signing"].as_str().expect("kid").to_owned();
    assert_ne!(
        second, first,
        "retiring the signing key puts a new one in its place"
    );
    pull(&registry, &before)
        .await
        .expect_error(401, "UNAUTHORIZED");
    let after = bearer(&token(&registry, "dev", PASSWORD, false).await);
    honoured(&pull(&registry, &after).await);
    let jwks = registry.send(call("GET", "/auth/jwks").anonymous()).await;
    jwks.expect(200);
    let published: Vec<String> = jwks.json()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| key["kid"].as_str().expect("kid").to_owned())
        .collect();
    assert_eq!(
        published,
        vec![second.clone()],
        "a retired key is not published"
    );

    let states = |reply: Reply| {
        reply.expect(200);
        reply.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|key| {
                format!(
                    "{} {}",
                    key["kid"].as_str().expect("kid"),
                    key["state"].as_str().expect("state")
                )
            })
            .collect::<Vec<_>>()
    };
    let mut listed = states(admin_api(&registry, "GET", "/api/v1/signing-keys", None).await);
    listed.sort_by_key(|state| state.ends_with("signing"));
    assert_eq!(
        listed,
        vec![format!("{first} retired"), format!("{second} signing")]
    );
    admin_api(
        &registry,
        "POST",
        &format!("/api/v1/signing-keys/{first}/retire"),
        None,
    )
    .await
    .expect(404);
    registry
        .send(call("GET", "/api/v1/signing-keys").header("authorization", basic("dev", PASSWORD)))
        .await
        .expect(403);

    // Another replica retires the key that signs here: its tokens stop within the refresh
    // interval, and this replica signs with the replacement that replica stored.
    let (replacement, pem) = auth::token::SigningKey::generate().expect("key");
    assert!(registry
        .store
        .retire_signing_key(
            &second,
            0,
            Some(&metadata::identity::SigningKeyRecord {
                kid: replacement.kid().to_owned(),
                pem,
                created_at: i64::MAX / 2,
                retired_at: None,
            }),
        )
        .await
        .expect("retire"));
    refused_eventually(&registry, &after).await;
    let third = token(&registry, "dev", PASSWORD, false).await;
    honoured(&pull(&registry, &bearer(&third)).await);
    assert_eq!(registry.access.signing_kid(), replacement.kid());

    let audited = registry
        .store
        .audit(&AuditFilter {
            action: Some("key.retire".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let results: Vec<&str> = audited
        .iter()
        .map(|record| record.event.result.as_str())
        .collect();
    assert_eq!(results, vec!["failed", "allowed"]);
}

#[tokio::test]
async fn tokens_wait_for_the_store_when_revocations_cannot_be_read_instead_of_being_honoured() {
    let (registry, _, _) = team_registry().await;
    let by_password = bearer(&token(&registry, "dev", PASSWORD, false).await);
    let base = || call("GET", "/v2/").header("authorization", by_password.clone());
    registry.send(base()).await.expect(200);
    // A closed pool fails every query as `Unavailable`, as a database that went away does.
    registry.store.close().await;
    let start = Instant::now();
    loop {
        let reply = registry.send(base()).await;
        if reply.status.as_u16() != 200 {
            reply.expect_error(503, "UNKNOWN");
            assert!(!reply.header("retry-after").is_empty());
            break;
        }
        assert!(
            start.elapsed() < ARRIVAL,
            "revocations older than their limit were trusted"
        );
        tokio::time::sleep(REVOCATION_REFRESH).await;
    }
}
