//! The Postgres store against a real, throwaway Postgres cluster: the shared behaviour suites,
//! plus what only a shared database has to show (replicas racing, migrations, the server
//! going away and coming back, TLS).

use std::time::Duration;

use futures_util::future::join_all;
use metadata::identity::SigningKeyRecord;
use metadata::schema::MigrationRun;
use metadata::{Error, IdentityStore, MetadataStore, UploadLimits};
use metadata_postgres::testing::{write_unrelated_ca, Cluster};
use metadata_postgres::{PoolSettings, PostgresStore};
use oci::{Digest, RepositoryName};
use sqlx::Connection;

async fn connect(url: &str) -> PostgresStore {
    PostgresStore::connect(url, PoolSettings::default())
        .await
        .expect("connect")
}

/// The versions a migration run applied; fails the test if it refused.
fn applied(run: MigrationRun) -> Vec<i64> {
    match run {
        MigrationRun::Applied(applied) => applied.iter().map(|m| m.version).collect(),
        MigrationRun::Refused(check) => panic!("migrations refused: {check}"),
    }
}

fn every_version() -> Vec<i64> {
    metadata_postgres::migrations()
        .iter()
        .map(|m| m.version)
        .collect()
}

#[tokio::test]
async fn passes_the_metadata_behaviour_suite() {
    let cluster = Cluster::start();
    let store = cluster.store().await;
    metadata::behaviour::run(&store).await;
    store.close().await;
}

#[tokio::test]
async fn passes_the_identity_behaviour_suite() {
    let cluster = Cluster::start();
    let store = cluster.store().await;
    metadata::behaviour::run_identity(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_migrating_together_apply_each_migration_once_and_agree_on_one_signing_key() {
    let cluster = Cluster::start();
    // Several replicas migrate the same empty database at once (a deploy job per replica):
    // each migration and the first key must each happen exactly once. A race shows only
    // sometimes, so try a few databases.
    for _ in 0..3 {
        let url = cluster.create_database().await;
        let stores: Vec<PostgresStore> = join_all((0..6).map(|_| connect(&url)))
            .await
            .into_iter()
            .collect();
        let runs = join_all(stores.iter().map(PostgresStore::migrate)).await;
        let mut versions: Vec<i64> = runs
            .into_iter()
            .flat_map(|run| applied(run.expect("migrate")))
            .collect();
        versions.sort_unstable();
        assert_eq!(
            versions,
            every_version(),
            "each migration applied by exactly one run"
        );
        let adds = stores.iter().enumerate().map(|(n, store)| async move {
            let key = SigningKeyRecord {
                kid: format!("k{n}"),
                pem: format!("pem{n}"),
                created_at: 1,
                retired_at: None,
            };
            store.add_first_signing_key(&key).await
        });
        for result in join_all(adds).await {
            result.expect("add");
        }
        for store in &stores {
            assert_eq!(store.signing_keys().await.expect("keys").len(), 1);
            store.close().await;
        }
    }
}

#[tokio::test]
async fn migrate_applies_what_is_pending_and_reports_it() {
    let cluster = Cluster::start();
    let url = cluster.create_database().await;
    let store = connect(&url).await;
    let fresh = store.schema().await.expect("schema");
    assert!(!fresh.is_current() && fresh.is_migratable(), "{fresh}");
    assert_eq!(
        fresh.pending.iter().map(|m| m.version).collect::<Vec<_>>(),
        every_version()
    );
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut admin)
        .await
        .expect("query");
    assert!(
        !recorded,
        "checking the schema must not change the database"
    );

    assert_eq!(
        applied(store.migrate().await.expect("migrate")),
        every_version()
    );
    assert!(store.schema().await.expect("schema").is_current());
    assert_eq!(
        applied(store.migrate().await.expect("migrate again")),
        Vec::<i64>::new(),
        "a second run has nothing to apply"
    );
}

#[tokio::test]
async fn a_schema_from_a_newer_or_different_release_is_refused_and_left_alone() {
    let cluster = Cluster::start();
    let url = cluster.create_database().await;
    let store = connect(&url).await;
    applied(store.migrate().await.expect("migrate"));
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    // What a newer release leaves behind: a migration this binary does not carry.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&mut admin)
    .await
    .expect("record a newer migration");
    let check = store.schema().await.expect("schema");
    assert_eq!(check.unknown, vec![9999], "{check}");
    assert!(!check.is_current() && !check.is_migratable());
    match store.migrate().await.expect("migrate") {
        MigrationRun::Refused(refused) => assert_eq!(refused, check),
        MigrationRun::Applied(applied) => panic!("migrated a newer schema: {applied:?}"),
    }

    // What a different build leaves behind: the same version with other contents.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 9999")
        .execute(&mut admin)
        .await
        .expect("forget it");
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&mut admin)
        .await
        .expect("change a checksum");
    let check = store.schema().await.expect("schema");
    assert_eq!(check.changed, vec![1], "{check}");
    assert!(matches!(
        store.migrate().await.expect("migrate"),
        MigrationRun::Refused(_)
    ));
}

#[tokio::test]
async fn reconnecting_keeps_data_and_applies_no_migration() {
    let cluster = Cluster::start();
    let url = cluster.create_database().await;
    let repo: RepositoryName = "keep/app".parse().expect("valid");
    let digest = Digest::sha256_from_bytes(&[9; 32]);
    {
        let store = connect(&url).await;
        applied(store.migrate().await.expect("migrate"));
        store.link_blob(&repo, &digest, 5, 1).await.expect("link");
        store.close().await;
    }
    let store = connect(&url).await;
    assert!(store.schema().await.expect("schema").is_current());
    assert_eq!(
        store.blob_size(&repo, &digest).await.expect("query"),
        Some(5)
    );
}

#[tokio::test]
async fn a_lost_database_is_unavailable_not_internal_and_the_store_recovers() {
    let cluster = Cluster::start();
    let store = cluster.store().await;
    let repo: RepositoryName = "gone/app".parse().expect("valid");
    let digest = Digest::sha256_from_bytes(&[7; 32]);
    store.link_blob(&repo, &digest, 1, 1).await.expect("link");
    cluster.stop();
    // The pooled connection is dead and new ones are refused until the pool gives up.
    match store.blob_size(&repo, &digest).await {
        Err(Error::Unavailable(_)) => {}
        other => panic!("expected Unavailable once the server stopped, got {other:?}"),
    }

    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(2),
    };
    match PostgresStore::connect(&cluster.url("postgres"), settings).await {
        Err(Error::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable for a refused connection, got {other:?}"),
        Ok(_) => panic!("connected to a stopped server"),
    }

    cluster.start_again();
    assert_eq!(
        store
            .blob_size(&repo, &digest)
            .await
            .expect("the same store, after the restart"),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_under_a_running_query_is_unavailable() {
    let cluster = Cluster::start();
    let url = cluster.create_database().await;
    let store = connect(&url).await;
    applied(store.migrate().await.expect("migrate"));
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    // Hold a lock the store's query will wait for, so it is in flight on the server...
    sqlx::query("BEGIN")
        .execute(&mut admin)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE repositories IN ACCESS EXCLUSIVE MODE")
        .execute(&mut admin)
        .await
        .expect("lock");
    let page = metadata::PageRequest {
        after: None,
        limit: 10,
    };
    let listing = tokio::spawn(async move { store.list_repositories(&page).await });
    let mut observer = sqlx::PgConnection::connect(&url).await.expect("connect");
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'bulwark' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut observer)
        .await
        .expect("query");
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...then drop its connection from the server's side, as a failover or a restart would.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bulwark'",
    )
    .execute(&mut observer)
    .await
    .expect("terminate");
    match listing.await.expect("the listing task") {
        Err(Error::Unavailable(_)) => {}
        other => panic!("expected Unavailable for a dropped connection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_single_node_database_imports_into_an_empty_postgres() {
    use metadata::identity::{AuditEvent, AuditFilter, ProjectRecord, RobotRecord, UserRecord};
    use metadata::ManifestCommit;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("metadata.db");
    let repo: RepositoryName = "team/app".parse().expect("valid");
    let layer = Digest::sha256_from_bytes(&[1; 32]);
    let manifest = Digest::sha256_from_bytes(&[2; 32]);
    let tag: oci::Tag = "v1".parse().expect("valid");
    let user = UserRecord {
        name: "alice".into(),
        password_hash: "$argon2id$v=19$stored".into(),
        admin: true,
        disabled: false,
        created_at: 10,
    };
    let robot = RobotRecord {
        name: "robot$team+ci".into(),
        project: Some("team".into()),
        description: Some("ci".into()),
        grants: "[]".into(),
        expires_at: 99,
        revoked: true,
        created_at: 11,
        last_used_at: None,
    };
    let key = SigningKeyRecord {
        kid: "k1".into(),
        pem: "pem".into(),
        created_at: 12,
        retired_at: None,
    };
    {
        let single = metadata_sqlite::SqliteStore::open(&path)
            .await
            .expect("open SQLite");
        single.link_blob(&repo, &layer, 7, 1).await.expect("link");
        single
            .commit_manifest(ManifestCommit {
                repository: &repo,
                digest: &manifest,
                media_type: oci::media_type::OCI_MANIFEST,
                body: b"{\"schemaVersion\":2}",
                artifact_type: None,
                subject: None,
                annotations: None,
                blobs: vec![layer.clone()],
                children: Vec::new(),
                tag: Some(&tag),
                now: 2,
            })
            .await
            .expect("manifest");
        single.create_user(&user).await.expect("user");
        let project = ProjectRecord {
            name: "team".into(),
            public: true,
            created_at: 3,
        };
        single.create_project(&project).await.expect("project");
        single
            .set_member("team", "alice", "owner")
            .await
            .expect("member");
        single.create_robot(&robot, "hash").await.expect("robot");
        assert!(single.revoke_robot(&robot.name).await.expect("revoke"));
        single.add_first_signing_key(&key).await.expect("key");
        single
            .record_audit(&AuditEvent {
                time: 4,
                principal: "user:alice".into(),
                action: "push".into(),
                target: "team/app".into(),
                result: "allowed".into(),
                reason: None,
                client: Some("127.0.0.1".into()),
            })
            .await
            .expect("audit");
        single.close().await;
    }

    let cluster = Cluster::start();
    let store = cluster.store().await;
    let imported = store.import_sqlite(&path).await.expect("import");
    let count = |table: &str| {
        imported
            .tables
            .iter()
            .find(|(name, _)| *name == table)
            .map(|(_, n)| *n)
    };
    assert_eq!(
        (
            count("repositories"),
            count("manifests"),
            count("tags"),
            count("users")
        ),
        (Some(1), Some(1), Some(1), Some(1))
    );

    assert_eq!(store.blob_size(&repo, &layer).await.expect("blob"), Some(7));
    let served = store
        .manifest_by_tag(&repo, &tag)
        .await
        .expect("tag")
        .expect("tagged");
    assert_eq!(served.digest, manifest);
    assert_eq!(store.user("alice").await.expect("user"), Some(user));
    assert_eq!(store.robot(&robot.name).await.expect("robot"), Some(robot));
    assert_eq!(store.signing_keys().await.expect("keys"), vec![key]);
    assert!(
        store
            .project("team")
            .await
            .expect("project")
            .expect("exists")
            .public
    );
    let audit = store
        .audit(&AuditFilter {
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(audit.len(), 1);

    // New records get fresh ids after the imported ones.
    store
        .create_user(&UserRecord {
            name: "bob".into(),
            password_hash: "x".into(),
            admin: false,
            disabled: false,
            created_at: 20,
        })
        .await
        .expect("a new user after the import");
    store
        .set_member("team", "bob", "reader")
        .await
        .expect("member");

    let again = store.import_sqlite(&path).await;
    assert!(
        matches!(again, Err(Error::Conflict(ref text)) if text.contains("already holds")),
        "an import never merges: {again:?}"
    );
    store.close().await;
}

#[tokio::test]
async fn tls_with_verify_full_works_and_an_unknown_ca_or_plaintext_is_refused() {
    let cluster = Cluster::start_with_tls();
    let url = cluster.create_database().await;
    assert!(url.contains("sslmode=verify-full&sslrootcert="), "{url}");
    let store = connect(&url).await;
    applied(store.migrate().await.expect("migrate over TLS"));
    let repo: RepositoryName = "tls/app".parse().expect("valid");
    let digest = Digest::sha256_from_bytes(&[3; 32]);
    store.link_blob(&repo, &digest, 3, 1).await.expect("link");
    assert_eq!(
        store.blob_size(&repo, &digest).await.expect("query"),
        Some(3)
    );
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("query");
    assert!(encrypted, "the connection is encrypted");

    let dir = tempfile::tempdir().expect("temp dir");
    let unrelated = dir.path().join("unrelated-ca.crt");
    write_unrelated_ca(&unrelated);
    let ca = cluster.ca_certificate().display().to_string();
    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(2),
    };
    let wrong_ca = url.replace(&ca, &unrelated.display().to_string());
    match PostgresStore::connect(&wrong_ca, settings).await {
        Err(err) => assert!(
            err.to_string().contains("UnknownIssuer"),
            "refused for its certificate: {err}"
        ),
        Ok(_) => panic!("connected trusting a CA that did not sign the server's certificate"),
    }
    let (base, _) = url.split_once('?').expect("a query");
    match PostgresStore::connect(&format!("{base}?sslmode=disable"), settings).await {
        Err(err) => assert!(err.to_string().contains("no encryption"), "{err}"),
        Ok(_) => panic!("a TLS-only cluster accepted a plaintext connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_sweeping_together_never_claim_the_same_upload() {
    use metadata::{UploadId, UploadRecord};

    let cluster = Cluster::start();
    let url = cluster.create_database().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let store = PostgresStore::connect(&url, PoolSettings::default())
            .await
            .expect("connect");
        replicas.push(store);
    }
    let first = &replicas[0];
    first.migrate().await.expect("migrate");
    let repository: RepositoryName = "sweep/app".parse().expect("valid");
    for n in 0..60u128 {
        first
            .create_upload(
                &UploadRecord {
                    id: UploadId(uuid::Uuid::from_u128(n + 1)),
                    repository: repository.clone(),
                    offset: 0,
                    hash_state: vec![1],
                    storage_state: Vec::new(),
                    principal: None,
                    created_at: 1,
                    updated_at: 1,
                },
                UploadLimits::UNLIMITED,
            )
            .await
            .expect("create");
    }
    // Three replicas (pools of their own) sweep the same database at once, in small batches.
    let sweeps = replicas.iter().map(|store| async move {
        let mut claimed = Vec::new();
        loop {
            let batch = store.claim_stale_uploads(100, 200, 7).await.expect("claim");
            if batch.is_empty() {
                return claimed;
            }
            claimed.extend(batch.into_iter().map(|upload| upload.id.0));
        }
    });
    let mut all: Vec<uuid::Uuid> = join_all(sweeps).await.into_iter().flatten().collect();
    assert_eq!(all.len(), 60, "every stale upload is claimed once");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 60, "no upload is claimed twice");
    for store in &replicas {
        store.close().await;
    }
}
