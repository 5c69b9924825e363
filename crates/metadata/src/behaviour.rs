//! The behaviour every `MetadataStore` backend must show. Each backend's tests call `run`
//! with a fresh, empty store; a failure panics with what was expected.

use oci::{Digest, RepositoryName, Tag};

use crate::{
    Error, ManifestCommit, MetadataStore, PageRequest, UploadId, UploadLimits, UploadRecord,
};

fn digest(n: u8) -> Digest {
    Digest::sha256_from_bytes(&[n; 32])
}

fn name(text: &str) -> RepositoryName {
    text.parse().expect("test repository names are valid")
}

fn tag(text: &str) -> Tag {
    text.parse().expect("test tags are valid")
}

fn page(limit: u32, after: Option<&str>) -> PageRequest {
    PageRequest {
        limit,
        after: after.map(str::to_owned),
    }
}

fn commit<'a>(
    repository: &'a RepositoryName,
    manifest: &'a Digest,
    blobs: Vec<Digest>,
    tag: Option<&'a Tag>,
) -> ManifestCommit<'a> {
    ManifestCommit {
        repository,
        digest: manifest,
        media_type: oci::media_type::OCI_MANIFEST,
        body: b"{\"schemaVersion\":2}",
        artifact_type: None,
        subject: None,
        annotations: None,
        blobs,
        children: Vec::new(),
        tag,
        now: 1_000,
    }
}

/// Runs every behaviour check against `store`, which must start empty.
async fn open_uploads_are_bounded_per_principal_and_repository(store: &dyn MetadataStore) {
    let record = |n: u128, repository: &str, principal: &str| UploadRecord {
        id: UploadId(uuid::Uuid::from_u128(0xb0_0000 + n)),
        repository: repository.parse().expect("valid"),
        offset: 0,
        hash_state: vec![1],
        storage_state: Vec::new(),
        principal: Some(principal.to_owned()),
        created_at: 1,
        updated_at: 1,
    };
    let limits = UploadLimits {
        per_principal: 2,
        per_repository: 3,
    };
    for (n, repository, principal, created) in [
        (1, "bounded/a", "user:pusher", true),
        (2, "bounded/b", "user:pusher", true),
        (3, "bounded/c", "user:pusher", false),
        (4, "bounded/a", "user:other", true),
        (5, "bounded/a", "user:third", true),
        (6, "bounded/a", "user:fourth", false),
    ] {
        let upload = record(n, repository, principal);
        assert_eq!(
            store.create_upload(&upload, limits).await.expect("create"),
            created,
            "upload {n} by {principal} in {repository}"
        );
        assert_eq!(
            store.upload(upload.id).await.expect("query").is_some(),
            created,
            "a refused upload records nothing"
        );
    }
    // A finished session makes room again.
    assert!(store
        .delete_upload(record(1, "bounded/a", "user:pusher").id)
        .await
        .expect("delete"));
    assert!(store
        .create_upload(&record(7, "bounded/c", "user:pusher"), limits)
        .await
        .expect("create"));
}

pub async fn run(store: &dyn MetadataStore) {
    blobs_are_visible_per_repository(store).await;
    manifests_require_their_references(store).await;
    tags_move_and_delete(store).await;
    deleting_a_manifest_removes_its_tags(store).await;
    listings_paginate_in_lexical_order(store).await;
    referrers_filter_by_artifact_type(store).await;
    uploads_advance_only_from_the_expected_offset(store).await;
    one_claim_ends_an_upload(store).await;
    open_uploads_are_bounded_per_principal_and_repository(store).await;
}

async fn blobs_are_visible_per_repository(store: &dyn MetadataStore) {
    let (a, b) = (name("blobs/a"), name("blobs/b"));
    let blob = digest(1);
    assert_eq!(store.blob_size(&a, &blob).await.expect("query"), None);
    store.link_blob(&a, &blob, 42, 1).await.expect("link");
    store
        .link_blob(&a, &blob, 42, 2)
        .await
        .expect("linking twice is harmless");
    assert_eq!(store.blob_size(&a, &blob).await.expect("query"), Some(42));
    assert_eq!(
        store.blob_size(&b, &blob).await.expect("query"),
        None,
        "a blob is visible only where it was linked"
    );

    assert_eq!(
        store
            .mount_blob(&b, &name("blobs/none"), &blob, 3)
            .await
            .expect("mount"),
        None
    );
    assert_eq!(
        store.mount_blob(&b, &a, &blob, 3).await.expect("mount"),
        Some(42)
    );
    assert_eq!(store.blob_size(&b, &blob).await.expect("query"), Some(42));

    assert!(store.unlink_blob(&a, &blob).await.expect("unlink"));
    assert!(
        !store.unlink_blob(&a, &blob).await.expect("unlink"),
        "a second unlink finds nothing"
    );
    assert_eq!(store.blob_size(&a, &blob).await.expect("query"), None);
    assert_eq!(
        store.blob_size(&b, &blob).await.expect("query"),
        Some(42),
        "unlinking in one repository leaves the other"
    );
}

async fn manifests_require_their_references(store: &dyn MetadataStore) {
    let repo = name("refs/app");
    let (config, layer, manifest) = (digest(10), digest(11), digest(12));
    store.link_blob(&repo, &config, 2, 1).await.expect("link");
    match store
        .commit_manifest(commit(
            &repo,
            &manifest,
            vec![config.clone(), layer.clone()],
            None,
        ))
        .await
    {
        Err(Error::UnknownReferences(missing)) => assert_eq!(missing, vec![layer.clone()]),
        other => panic!("expected UnknownReferences, got {other:?}"),
    }
    assert_eq!(
        store
            .manifest_by_digest(&repo, &manifest)
            .await
            .expect("query"),
        None,
        "a refused manifest leaves nothing behind"
    );

    store.link_blob(&repo, &layer, 3, 1).await.expect("link");
    store
        .commit_manifest(commit(&repo, &manifest, vec![config, layer], None))
        .await
        .expect("commit");
    let record = store
        .manifest_by_digest(&repo, &manifest)
        .await
        .expect("query")
        .expect("stored");
    assert_eq!(record.body, b"{\"schemaVersion\":2}");
    assert_eq!(record.media_type, oci::media_type::OCI_MANIFEST);

    let index = digest(13);
    let missing_child = digest(14);
    let mut index_commit = commit(&repo, &index, Vec::new(), None);
    index_commit.children = vec![manifest.clone(), missing_child.clone()];
    match store.commit_manifest(index_commit.clone()).await {
        Err(Error::UnknownReferences(missing)) => assert_eq!(missing, vec![missing_child]),
        other => panic!("expected UnknownReferences for a child manifest, got {other:?}"),
    }
    index_commit.children = vec![manifest.clone()];
    store
        .commit_manifest(index_commit.clone())
        .await
        .expect("an index of held manifests commits");
    store
        .commit_manifest(index_commit)
        .await
        .expect("committing the same manifest again is idempotent");
}

async fn tags_move_and_delete(store: &dyn MetadataStore) {
    let repo = name("tags/app");
    let (first, second) = (digest(20), digest(21));
    let latest = tag("latest");
    store
        .commit_manifest(commit(&repo, &first, Vec::new(), Some(&latest)))
        .await
        .expect("commit");
    let found = store
        .manifest_by_tag(&repo, &latest)
        .await
        .expect("query")
        .expect("tagged");
    assert_eq!(found.digest, first);
    store
        .commit_manifest(commit(&repo, &second, Vec::new(), Some(&latest)))
        .await
        .expect("commit");
    let found = store
        .manifest_by_tag(&repo, &latest)
        .await
        .expect("query")
        .expect("tagged");
    assert_eq!(found.digest, second, "pushing a tag again moves it");
    assert!(
        store
            .manifest_by_digest(&repo, &first)
            .await
            .expect("query")
            .is_some(),
        "the untagged manifest stays"
    );

    assert!(store.delete_tag(&repo, &latest).await.expect("delete"));
    assert!(!store.delete_tag(&repo, &latest).await.expect("delete"));
    assert_eq!(
        store.manifest_by_tag(&repo, &latest).await.expect("query"),
        None
    );
    assert!(
        store
            .manifest_by_digest(&repo, &second)
            .await
            .expect("query")
            .is_some(),
        "deleting a tag keeps its manifest"
    );
}

async fn deleting_a_manifest_removes_its_tags(store: &dyn MetadataStore) {
    let repo = name("delete/app");
    let manifest = digest(30);
    let (v1, v2) = (tag("v1"), tag("v2"));
    store
        .commit_manifest(commit(&repo, &manifest, Vec::new(), Some(&v1)))
        .await
        .expect("commit");
    store
        .commit_manifest(commit(&repo, &manifest, Vec::new(), Some(&v2)))
        .await
        .expect("commit");
    assert!(store
        .delete_manifest(&repo, &manifest)
        .await
        .expect("delete"));
    assert!(!store
        .delete_manifest(&repo, &manifest)
        .await
        .expect("delete"));
    assert_eq!(
        store.manifest_by_tag(&repo, &v1).await.expect("query"),
        None
    );
    assert_eq!(
        store.manifest_by_tag(&repo, &v2).await.expect("query"),
        None
    );
    assert_eq!(
        store
            .list_tags(&repo, &page(100, None))
            .await
            .expect("list"),
        Some(Vec::new())
    );
}

async fn listings_paginate_in_lexical_order(store: &dyn MetadataStore) {
    let repo = name("list/app");
    let manifest = digest(40);
    for text in ["b", "a", "C", "a1", "c"] {
        store
            .commit_manifest(commit(&repo, &manifest, Vec::new(), Some(&tag(text))))
            .await
            .expect("commit");
    }
    let all = store
        .list_tags(&repo, &page(100, None))
        .await
        .expect("list")
        .expect("known");
    assert_eq!(all, vec!["C", "a", "a1", "b", "c"]);
    let first = store
        .list_tags(&repo, &page(2, None))
        .await
        .expect("list")
        .expect("known");
    assert_eq!(first, vec!["C", "a"]);
    let next = store
        .list_tags(&repo, &page(2, Some("a")))
        .await
        .expect("list")
        .expect("known");
    assert_eq!(next, vec!["a1", "b"]);
    let none = store
        .list_tags(&repo, &page(0, None))
        .await
        .expect("list")
        .expect("known");
    assert!(none.is_empty());
    assert_eq!(
        store
            .list_tags(&name("list/unknown"), &page(10, None))
            .await
            .expect("list"),
        None
    );

    let repositories = store
        .list_repositories(&page(1000, None))
        .await
        .expect("catalog");
    let mut sorted = repositories.clone();
    sorted.sort();
    assert_eq!(repositories, sorted, "the catalog is in lexical order");
    assert!(repositories.contains(&"list/app".to_owned()));
    let after = store
        .list_repositories(&page(1, Some("list/app")))
        .await
        .expect("catalog");
    assert!(after.iter().all(|n| n.as_str() > "list/app"));
}

async fn referrers_filter_by_artifact_type(store: &dyn MetadataStore) {
    let repo = name("referrers/app");
    let subject = digest(50);
    let (sbom, signature, unrelated) = (digest(51), digest(52), digest(53));
    let mut with_sbom = commit(&repo, &sbom, Vec::new(), None);
    with_sbom.subject = Some(&subject);
    with_sbom.artifact_type = Some("application/spdx+json");
    with_sbom.annotations = Some(r#"{"org.example":"yes"}"#.into());
    store
        .commit_manifest(with_sbom)
        .await
        .expect("a subject need not exist yet");
    let mut with_signature = commit(&repo, &signature, Vec::new(), None);
    with_signature.subject = Some(&subject);
    with_signature.artifact_type = Some("application/vnd.dev.cosign.artifact.sig.v1+json");
    store.commit_manifest(with_signature).await.expect("commit");
    store
        .commit_manifest(commit(&repo, &unrelated, Vec::new(), None))
        .await
        .expect("commit");

    let mut all = store
        .referrers(&repo, &subject, None)
        .await
        .expect("referrers");
    all.sort_by(|a, b| a.digest.cmp(&b.digest));
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].digest, sbom);
    assert_eq!(
        all[0].annotations.as_deref(),
        Some(r#"{"org.example":"yes"}"#)
    );
    assert_eq!(all[0].size, b"{\"schemaVersion\":2}".len() as u64);
    let filtered = store
        .referrers(&repo, &subject, Some("application/spdx+json"))
        .await
        .expect("referrers");
    assert_eq!(
        filtered
            .iter()
            .map(|r| r.digest.clone())
            .collect::<Vec<_>>(),
        vec![sbom.clone()]
    );
    assert!(store
        .referrers(&repo, &digest(59), None)
        .await
        .expect("referrers")
        .is_empty());

    assert!(store.delete_manifest(&repo, &sbom).await.expect("delete"));
    assert_eq!(
        store
            .referrers(&repo, &subject, None)
            .await
            .expect("referrers")
            .len(),
        1,
        "a deleted referrer disappears"
    );
}

async fn uploads_advance_only_from_the_expected_offset(store: &dyn MetadataStore) {
    let id = UploadId(uuid::Uuid::from_u128(7));
    let record = UploadRecord {
        id,
        repository: name("uploads/app"),
        offset: 0,
        hash_state: vec![1, 2, 3],
        storage_state: Vec::new(),
        principal: Some("user:alice".into()),
        created_at: 100,
        updated_at: 100,
    };
    assert_eq!(store.upload(id).await.expect("query"), None);
    assert!(store
        .create_upload(&record, UploadLimits::UNLIMITED)
        .await
        .expect("create"));
    assert_eq!(store.upload(id).await.expect("query"), Some(record.clone()));

    assert!(store
        .advance_upload(id, 0, 10, &[4, 5], b"{\"parts\":[]}", 200)
        .await
        .expect("advance"));
    assert!(
        !store
            .advance_upload(id, 0, 20, &[6], &[], 300)
            .await
            .expect("advance"),
        "a stale offset loses"
    );
    let advanced = store.upload(id).await.expect("query").expect("exists");
    assert_eq!(
        (
            advanced.offset,
            advanced.hash_state.as_slice(),
            advanced.storage_state.as_slice(),
            advanced.updated_at
        ),
        (10, &[4u8, 5][..], &b"{\"parts\":[]}"[..], 200)
    );

    let other = UploadRecord {
        id: UploadId(uuid::Uuid::from_u128(8)),
        updated_at: 500,
        ..record
    };
    assert!(store
        .create_upload(&other, UploadLimits::UNLIMITED)
        .await
        .expect("create"));
    let stale = store
        .claim_stale_uploads(300, 600, 10)
        .await
        .expect("stale");
    assert_eq!(stale.iter().map(|u| u.id).collect::<Vec<_>>(), vec![id]);
    assert!(
        store
            .claim_stale_uploads(300, 600, 10)
            .await
            .expect("stale")
            .is_empty(),
        "a claimed upload is not handed out twice"
    );
    assert_eq!(
        store
            .claim_stale_uploads(700, 800, 10)
            .await
            .expect("stale")
            .iter()
            .map(|u| u.id)
            .collect::<Vec<_>>(),
        vec![id, other.id],
        "an abandoned claim ages out again"
    );

    assert!(store.delete_upload(id).await.expect("delete"));
    assert!(!store.delete_upload(id).await.expect("delete"));
    assert_eq!(store.upload(id).await.expect("query"), None);
}

async fn one_claim_ends_an_upload(store: &dyn MetadataStore) {
    let id = UploadId(uuid::Uuid::from_u128(9));
    let record = UploadRecord {
        id,
        repository: name("uploads/ending"),
        offset: 0,
        hash_state: vec![1],
        storage_state: Vec::new(),
        principal: None,
        created_at: 1_000,
        updated_at: 1_000,
    };
    assert!(store
        .create_upload(&record, UploadLimits::UNLIMITED)
        .await
        .expect("create"));
    let (mine, theirs) = (digest(40), digest(41));
    let claim = |offset, digest, now, until| store.claim_upload(id, offset, digest, now, until);

    assert!(
        !claim(5, Some(&mine), 1_100, 1_200).await.expect("claim"),
        "a claim from an offset the upload is not at loses"
    );
    assert!(claim(0, Some(&mine), 1_100, 1_200).await.expect("claim"));
    assert_eq!(
        store.upload(id).await.expect("query").map(|u| u.updated_at),
        Some(1_100),
        "a claim touches the upload"
    );
    assert!(
        !claim(0, Some(&theirs), 1_150, 1_250).await.expect("claim"),
        "a finish as another digest loses to a live claim"
    );
    assert!(
        !claim(0, None, 1_150, 1_250).await.expect("claim"),
        "so does a discard"
    );
    assert!(
        !store
            .advance_upload(id, 0, 10, &[2], &[], 1_150)
            .await
            .expect("advance"),
        "a claimed upload does not advance"
    );
    assert!(
        !store
            .claim_stale_uploads(i64::MAX, 1_150, 100)
            .await
            .expect("stale")
            .iter()
            .any(|u| u.id == id),
        "nor is it stale while the claim holds"
    );
    assert!(
        claim(0, Some(&mine), 1_150, 1_250).await.expect("claim"),
        "a finish as the same digest goes on (a retried PUT)"
    );

    // The claimant crashed: once its claim expires, the upload is usable again.
    assert!(claim(0, None, 1_250, 1_350).await.expect("claim"));
    assert!(
        !claim(0, None, 1_300, 1_400).await.expect("claim"),
        "two discards never share a claim"
    );
    assert!(store
        .advance_upload(id, 0, 10, &[2], &[], 1_350)
        .await
        .expect("advance"));
    assert!(
        claim(10, Some(&theirs), 1_360, 1_460).await.expect("claim"),
        "the advance cleared the expired claim"
    );

    assert!(store.delete_upload(id).await.expect("delete"));
    assert!(
        !claim(10, Some(&theirs), 1_400, 1_500).await.expect("claim"),
        "an upload that is gone cannot be claimed"
    );
}

/// Runs every identity check against `store`, which must start empty.
pub async fn run_identity(store: &dyn crate::IdentityStore) {
    users_are_unique_and_updatable(store).await;
    projects_hold_members_and_refuse_duplicates(store).await;
    secrets_find_their_robot_or_token(store).await;
    the_first_signing_key_wins(store).await;
    audit_events_filter_newest_first(store).await;
    changes_that_end_tokens_record_revocations_in_order(store).await;
    deleting_accounts_revokes_them_and_their_refresh_tokens(store).await;
    refresh_tokens_are_listed_used_and_revoked_one_at_a_time(store).await;
    retired_signing_keys_are_kept_and_announced(store).await;
}

fn user_record(name: &str) -> crate::identity::UserRecord {
    crate::identity::UserRecord {
        name: name.into(),
        password_hash: format!("hash-of-{name}"),
        admin: false,
        disabled: false,
        created_at: 10,
    }
}

async fn users_are_unique_and_updatable(store: &dyn crate::IdentityStore) {
    use crate::identity::UserUpdate;
    store
        .create_user(&user_record("alice"))
        .await
        .expect("create");
    assert!(matches!(
        store.create_user(&user_record("alice")).await,
        Err(Error::Conflict(_))
    ));
    store
        .create_user(&user_record("bob"))
        .await
        .expect("create");
    let update = UserUpdate {
        disabled: Some(true),
        ..UserUpdate::default()
    };
    let updated = store
        .update_user("bob", &update)
        .await
        .expect("update")
        .expect("exists");
    assert!(updated.disabled);
    assert_eq!(updated.password_hash, "hash-of-bob", "unset fields stay");
    assert_eq!(
        store.update_user("nobody", &update).await.expect("update"),
        None
    );
    let names: Vec<String> = store
        .list_users(None, 10)
        .await
        .expect("list")
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, vec!["alice", "bob"]);
    let after: Vec<String> = store
        .list_users(Some("alice"), 10)
        .await
        .expect("list")
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(after, vec!["bob"]);
    assert!(store.delete_user("bob").await.expect("delete"));
    assert_eq!(store.user("bob").await.expect("get"), None);
}

async fn projects_hold_members_and_refuse_duplicates(store: &dyn crate::IdentityStore) {
    use crate::identity::ProjectRecord;
    let team = ProjectRecord {
        name: "team".into(),
        public: false,
        created_at: 10,
    };
    store.create_project(&team).await.expect("create");
    assert!(matches!(
        store.create_project(&team).await,
        Err(Error::Conflict(_))
    ));
    store
        .create_user(&user_record("carol"))
        .await
        .expect("create");
    store
        .set_member("team", "carol", "developer")
        .await
        .expect("member");
    store
        .set_member("team", "carol", "maintainer")
        .await
        .expect("role change");
    assert!(matches!(
        store.set_member("team", "ghost", "reader").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.set_member("nope", "carol", "reader").await,
        Err(Error::NotFound(_))
    ));
    let (project, members) = store
        .project_policy("team")
        .await
        .expect("policy")
        .expect("exists");
    assert!(!project.public);
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].user.as_str(), members[0].role.as_str()),
        ("carol", "maintainer")
    );
    assert!(store
        .set_project_public("team", true)
        .await
        .expect("visibility"));
    assert!(
        store
            .project("team")
            .await
            .expect("get")
            .expect("exists")
            .public
    );
    assert_eq!(store.project_policy("none").await.expect("policy"), None);

    store
        .create_user(&user_record("dave"))
        .await
        .expect("create");
    store
        .set_member("team", "dave", "reader")
        .await
        .expect("member");
    assert!(store.delete_user("dave").await.expect("delete"));
    let (_, members) = store
        .project_policy("team")
        .await
        .expect("policy")
        .expect("exists");
    assert_eq!(
        members.len(),
        1,
        "deleting a user removes their memberships"
    );
    assert!(store.remove_member("team", "carol").await.expect("remove"));
    assert!(!store.remove_member("team", "carol").await.expect("remove"));

    let empty = ProjectRecord {
        name: "empty".into(),
        public: false,
        created_at: 10,
    };
    store.create_project(&empty).await.expect("create");
    assert!(store
        .delete_project("empty")
        .await
        .expect("an empty project deletes"));
    assert!(!store.delete_project("empty").await.expect("delete"));
}

async fn secrets_find_their_robot_or_token(store: &dyn crate::IdentityStore) {
    use crate::identity::{AccessTokenRecord, ProjectRecord, RobotRecord, SecretOwner};
    store
        .create_project(&ProjectRecord {
            name: "ci".into(),
            public: false,
            created_at: 10,
        })
        .await
        .expect("create");
    let robot = RobotRecord {
        name: "robot$ci+builder".into(),
        project: Some("ci".into()),
        description: Some("builds".into()),
        grants: r#"[{"pattern":"ci/*","actions":["pull"]}]"#.into(),
        expires_at: 1_000,
        revoked: false,
        created_at: 10,
        last_used_at: None,
    };
    store
        .create_robot(&robot, "robot-hash")
        .await
        .expect("create");
    assert_eq!(
        store
            .robot_secret_hash("robot$ci+builder")
            .await
            .expect("hash"),
        Some("robot-hash".to_owned())
    );
    assert_eq!(
        store
            .robot_secret_hash("robot$ci+nobody")
            .await
            .expect("hash"),
        None
    );
    assert!(matches!(
        store.create_robot(&robot, "other-hash").await,
        Err(Error::Conflict(_))
    ));
    match store.secret_owner("robot-hash", 50).await.expect("lookup") {
        Some(SecretOwner::Robot(found)) => {
            assert_eq!(found.name, robot.name);
            assert_eq!(found.project.as_deref(), Some("ci"));
        }
        other => panic!("expected the robot, got {other:?}"),
    }
    assert_eq!(
        store
            .robot("robot$ci+builder")
            .await
            .expect("get")
            .and_then(|r| r.last_used_at),
        Some(50),
        "use is recorded"
    );
    assert!(store
        .rotate_robot("robot$ci+builder", "new-hash", Some(2_000))
        .await
        .expect("rotate"));
    assert_eq!(
        store.secret_owner("robot-hash", 60).await.expect("lookup"),
        None,
        "the old secret stops working"
    );
    assert_eq!(
        store
            .robot_secret_hash("robot$ci+builder")
            .await
            .expect("hash"),
        Some("new-hash".to_owned()),
        "rotation replaces the hash refresh tokens are bound to"
    );
    assert!(store
        .revoke_robot("robot$ci+builder")
        .await
        .expect("revoke"));
    let revoked = store
        .robot("robot$ci+builder")
        .await
        .expect("get")
        .expect("exists");
    assert!(revoked.revoked);
    assert_eq!(revoked.expires_at, 2_000);
    assert_eq!(store.list_robots(Some("ci")).await.expect("list").len(), 1);
    assert!(store.list_robots(None).await.expect("list").is_empty());

    store
        .create_user(&user_record("erin"))
        .await
        .expect("create");
    let token = AccessTokenRecord {
        id: "t1".into(),
        user: "erin".into(),
        description: "laptop".into(),
        expires_at: None,
        revoked: false,
        created_at: 10,
        last_used_at: None,
    };
    store
        .create_access_token(&token, "token-hash")
        .await
        .expect("create");
    match store.secret_owner("token-hash", 70).await.expect("lookup") {
        Some(SecretOwner::AccessToken { token, user }) => {
            assert_eq!((token.id.as_str(), user.name.as_str()), ("t1", "erin"));
            assert_eq!(
                token.last_used_at, None,
                "the record read is from before this use"
            );
        }
        other => panic!("expected the token, got {other:?}"),
    }
    assert_eq!(
        store.list_access_tokens("erin").await.expect("list")[0].last_used_at,
        Some(70)
    );
    assert!(store
        .revoke_access_token("erin", "t1")
        .await
        .expect("revoke"));
    assert!(
        !store
            .revoke_access_token("someone", "t1")
            .await
            .expect("revoke"),
        "only the owner's tokens"
    );
    let missing_user = AccessTokenRecord {
        id: "t2".into(),
        user: "ghost".into(),
        ..token
    };
    assert!(matches!(
        store.create_access_token(&missing_user, "h2").await,
        Err(Error::NotFound(_))
    ));
}

async fn the_first_signing_key_wins(store: &dyn crate::IdentityStore) {
    use crate::identity::SigningKeyRecord;
    assert!(store.signing_keys().await.expect("keys").is_empty());
    let first = SigningKeyRecord {
        kid: "k1".into(),
        pem: "pem1".into(),
        created_at: 1,
        retired_at: None,
    };
    let second = SigningKeyRecord {
        kid: "k2".into(),
        pem: "pem2".into(),
        created_at: 2,
        retired_at: None,
    };
    store.add_first_signing_key(&first).await.expect("add");
    store
        .add_first_signing_key(&second)
        .await
        .expect("add is a no-op once a key exists");
    let keys = store.signing_keys().await.expect("keys");
    assert_eq!(keys, vec![first.clone()]);
    let configured = SigningKeyRecord {
        kid: "k3".into(),
        pem: "pem3".into(),
        created_at: 3,
        retired_at: None,
    };
    store.add_signing_key(&configured).await.expect("add");
    store
        .add_signing_key(&configured)
        .await
        .expect("adding a known kid is a no-op");
    assert_eq!(
        store.signing_keys().await.expect("keys"),
        vec![first, configured]
    );
}

async fn audit_events_filter_newest_first(store: &dyn crate::IdentityStore) {
    use crate::identity::{AuditEvent, AuditFilter};
    for (time, principal, result) in [
        (1, "user:a", "allowed"),
        (2, "user:b", "denied"),
        (3, "user:a", "denied"),
    ] {
        store
            .record_audit(&AuditEvent {
                time,
                principal: principal.into(),
                action: "push".into(),
                target: "team/app".into(),
                result: result.into(),
                reason: None,
                client: Some("127.0.0.1".into()),
            })
            .await
            .expect("record");
    }
    let all = store
        .audit(&AuditFilter {
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(
        all.iter().map(|r| r.event.time).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    let mine = store
        .audit(&AuditFilter {
            principal: Some("user:a".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(mine.len(), 2);
    let denied_since_2 = store
        .audit(&AuditFilter {
            result: Some("denied".into()),
            since: Some(2),
            limit: 1,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(
        denied_since_2
            .iter()
            .map(|r| r.event.time)
            .collect::<Vec<_>>(),
        vec![3]
    );
    let older = store
        .audit(&AuditFilter {
            before_id: Some(all[0].id),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    assert_eq!(older.len(), 2);
}

/// The revocations recorded above `epoch`, as `subject@n` with `n` counted from `epoch`, and
/// the store's epoch after them.
async fn revoked_since(store: &dyn crate::IdentityStore, epoch: i64) -> (Vec<String>, i64) {
    let changes = store.revocations_since(epoch).await.expect("revocations");
    let listed = changes
        .iter()
        .map(|change| format!("{}@{}", change.subject, change.epoch - epoch))
        .collect();
    (listed, store.revocation_epoch().await.expect("epoch"))
}

async fn changes_that_end_tokens_record_revocations_in_order(store: &dyn crate::IdentityStore) {
    use crate::identity::{AccessTokenRecord, ProjectRecord, RobotRecord, UserUpdate};
    let start = store.revocation_epoch().await.expect("epoch");
    store
        .create_user(&user_record("rita"))
        .await
        .expect("create");
    store
        .create_project(&ProjectRecord {
            name: "rev".into(),
            public: false,
            created_at: 10,
        })
        .await
        .expect("create");
    let robot = RobotRecord {
        name: "robot$rev+ci".into(),
        project: Some("rev".into()),
        description: None,
        grants: "[]".into(),
        expires_at: 1_000,
        revoked: false,
        created_at: 10,
        last_used_at: None,
    };
    store
        .create_robot(&robot, "rev-robot-hash")
        .await
        .expect("create");
    let token = AccessTokenRecord {
        id: "revt1".into(),
        user: "rita".into(),
        description: "laptop".into(),
        expires_at: None,
        revoked: false,
        created_at: 10,
        last_used_at: None,
    };
    store
        .create_access_token(&token, "rev-token-hash")
        .await
        .expect("create");
    assert_eq!(
        revoked_since(store, start).await,
        (Vec::new(), start),
        "creating records revokes nothing"
    );

    let harmless = UserUpdate {
        admin: Some(true),
        disabled: Some(false),
        ..UserUpdate::default()
    };
    store.update_user("rita", &harmless).await.expect("update");
    assert_eq!(revoked_since(store, start).await.0, Vec::<String>::new());
    let disable = UserUpdate {
        disabled: Some(true),
        ..UserUpdate::default()
    };
    store.update_user("rita", &disable).await.expect("update");
    store
        .rotate_robot("robot$rev+ci", "rev-robot-hash-2", None)
        .await
        .expect("rotate");
    store
        .revoke_access_token("rita", "revt1")
        .await
        .expect("revoke");
    assert_eq!(
        revoked_since(store, start).await,
        (
            vec![
                "user:rita@1".to_owned(),
                "robot:robot$rev+ci@2".to_owned(),
                "token:revt1@3".to_owned()
            ],
            start + 3
        )
    );
    store.revoke_robot("robot$rev+ci").await.expect("revoke");
    for update in [
        UserUpdate {
            admin: Some(false),
            ..UserUpdate::default()
        },
        UserUpdate {
            password_hash: Some("new-hash-of-rita".into()),
            ..UserUpdate::default()
        },
    ] {
        store.update_user("rita", &update).await.expect("update");
    }
    assert_eq!(
        revoked_since(store, start + 3).await,
        (
            vec!["robot:robot$rev+ci@1".to_owned(), "user:rita@3".to_owned()],
            start + 6
        ),
        "a subject revoked again moves above every epoch; demotion and a new password revoke"
    );
    assert!(!store
        .revoke_robot("robot$rev+nobody")
        .await
        .expect("revoke"));
    store.update_user("nobody", &disable).await.expect("update");
    assert_eq!(
        revoked_since(store, start + 6).await.0,
        Vec::<String>::new(),
        "changing nothing revokes nothing"
    );
}

async fn deleting_accounts_revokes_them_and_their_refresh_tokens(store: &dyn crate::IdentityStore) {
    use crate::identity::{ProjectRecord, RefreshTokenRecord, RobotRecord};
    store
        .create_user(&user_record("dora"))
        .await
        .expect("create");
    store
        .create_refresh_token(&RefreshTokenRecord {
            id: "dora-r1".into(),
            subject: "user:dora".into(),
            credential: "password".into(),
            created_at: 10,
            expires_at: 1_000,
            last_used_at: None,
            revoked: false,
        })
        .await
        .expect("create");
    store
        .create_project(&ProjectRecord {
            name: "gone".into(),
            public: false,
            created_at: 10,
        })
        .await
        .expect("create");
    for name in ["robot$gone+a", "robot$gone+b"] {
        let robot = RobotRecord {
            name: name.into(),
            project: Some("gone".into()),
            description: None,
            grants: "[]".into(),
            expires_at: 1_000,
            revoked: false,
            created_at: 10,
            last_used_at: None,
        };
        store
            .create_robot(&robot, &format!("hash-{name}"))
            .await
            .expect("create");
    }
    let start = store.revocation_epoch().await.expect("epoch");
    assert!(store.delete_user("dora").await.expect("delete"));
    assert!(store
        .list_refresh_tokens("user:dora")
        .await
        .expect("list")
        .is_empty());
    assert!(store.delete_project("gone").await.expect("delete"));
    let (mut revoked, epoch) = revoked_since(store, start).await;
    revoked.sort();
    assert_eq!(
        revoked,
        vec![
            "robot:robot$gone+a@2",
            "robot:robot$gone+b@3",
            "user:dora@1"
        ],
        "a deleted project's robots are revoked with it, in name order"
    );
    assert_eq!(epoch, start + 3);
    assert!(!store.delete_user("dora").await.expect("delete"));
    assert_eq!(store.revocation_epoch().await.expect("epoch"), start + 3);
}

async fn refresh_tokens_are_listed_used_and_revoked_one_at_a_time(
    store: &dyn crate::IdentityStore,
) {
    use crate::identity::RefreshTokenRecord;
    let record = |id: &str, created_at| RefreshTokenRecord {
        id: id.into(),
        subject: "user:alice".into(),
        credential: "password".into(),
        created_at,
        expires_at: 1_000,
        last_used_at: None,
        revoked: false,
    };
    for (id, created_at) in [("alice-r2", 20), ("alice-r1", 10)] {
        store
            .create_refresh_token(&record(id, created_at))
            .await
            .expect("create");
    }
    assert!(matches!(
        store.create_refresh_token(&record("alice-r1", 30)).await,
        Err(Error::Conflict(_))
    ));
    let used = store
        .use_refresh_token("alice-r1", 50, Some(2_000))
        .await
        .expect("use")
        .expect("exists");
    assert_eq!((used.last_used_at, used.expires_at), (Some(50), 2_000));
    let used = store
        .use_refresh_token("alice-r1", 60, None)
        .await
        .expect("use")
        .expect("exists");
    assert_eq!((used.last_used_at, used.expires_at), (Some(60), 2_000));
    assert_eq!(
        store
            .use_refresh_token("nobody-r", 60, None)
            .await
            .expect("use"),
        None
    );
    let listed: Vec<String> = store
        .list_refresh_tokens("user:alice")
        .await
        .expect("list")
        .into_iter()
        .map(|token| token.id)
        .collect();
    assert_eq!(listed, vec!["alice-r1", "alice-r2"], "oldest first");
    let start = store.revocation_epoch().await.expect("epoch");
    assert!(
        !store
            .revoke_refresh_token("user:bob", "alice-r1")
            .await
            .expect("revoke"),
        "only the owner's"
    );
    assert!(store
        .revoke_refresh_token("user:alice", "alice-r1")
        .await
        .expect("revoke"));
    let tokens = store.list_refresh_tokens("user:alice").await.expect("list");
    assert_eq!(
        tokens
            .iter()
            .map(|token| (token.id.as_str(), token.revoked))
            .collect::<Vec<_>>(),
        vec![("alice-r1", true), ("alice-r2", false)]
    );
    assert_eq!(
        revoked_since(store, start).await,
        (vec!["refresh:alice-r1@1".to_owned()], start + 1)
    );
}

async fn retired_signing_keys_are_kept_and_announced(store: &dyn crate::IdentityStore) {
    use crate::identity::SigningKeyRecord;
    let start = store.revocation_epoch().await.expect("epoch");
    let key = |kid: &str, created_at| SigningKeyRecord {
        kid: kid.into(),
        pem: format!("pem-{kid}"),
        created_at,
        retired_at: None,
    };
    store.add_signing_key(&key("k4", 4)).await.expect("add");
    store
        .add_signing_key(&key("k4", 4))
        .await
        .expect("adding a known kid is a no-op");
    assert!(store
        .retire_signing_key("k4", 50, Some(&key("k5", 50)))
        .await
        .expect("retire"));
    assert!(
        !store
            .retire_signing_key("k4", 60, None)
            .await
            .expect("retire"),
        "a retired key is not in use"
    );
    assert!(!store
        .retire_signing_key("k-unknown", 60, None)
        .await
        .expect("retire"));
    assert!(store
        .retire_signing_key("k1", 70, None)
        .await
        .expect("retire"));
    let keys: Vec<(String, Option<i64>)> = store
        .signing_keys()
        .await
        .expect("keys")
        .into_iter()
        .map(|key| (key.kid, key.retired_at))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("k1".to_owned(), Some(70)),
            ("k3".to_owned(), None),
            ("k4".to_owned(), Some(50)),
            ("k5".to_owned(), None),
        ]
    );
    assert_eq!(
        revoked_since(store, start).await,
        (
            vec![
                "key:k5@2".to_owned(),
                "key:k4@3".to_owned(),
                "key:k1@4".to_owned()
            ],
            start + 4
        ),
        "new and retired keys are announced, so every replica reloads its keys"
    );
}
