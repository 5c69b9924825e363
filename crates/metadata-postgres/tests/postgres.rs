//! The Postgres store against a real, throwaway Postgres cluster: the shared behaviour suites,
//! plus what only a shared database has to show (replicas racing, the server going away).

use std::time::Duration;

use futures_util::future::join_all;
use metadata::identity::SigningKeyRecord;
use metadata::{Error, IdentityStore, MetadataStore};
use metadata_postgres::testing::Cluster;
use metadata_postgres::{PoolSettings, PostgresStore};
use oci::{Digest, RepositoryName};

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
async fn replicas_starting_together_agree_on_one_signing_key() {
    let cluster = Cluster::start();
    // Several replicas open the same empty database at once: migrations and the first key
    // must each happen exactly once. A race shows only sometimes, so try a few databases.
    for _ in 0..3 {
        let url = cluster.create_database().await;
        let opens = (0..6).map(|_| PostgresStore::open(&url, PoolSettings::default()));
        let stores: Vec<PostgresStore> = join_all(opens)
            .await
            .into_iter()
            .map(|opened| opened.expect("open"))
            .collect();
        let adds = stores.iter().enumerate().map(|(n, store)| async move {
            let key = SigningKeyRecord {
                kid: format!("k{n}"),
                pem: format!("pem{n}"),
                created_at: 1,
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
async fn reopening_keeps_data_and_reapplies_no_migration() {
    let cluster = Cluster::start();
    let url = cluster.create_database().await;
    let repo: RepositoryName = "keep/app".parse().expect("valid");
    let digest = Digest::sha256_from_bytes(&[9; 32]);
    {
        let store = PostgresStore::open(&url, PoolSettings::default())
            .await
            .expect("open");
        store.link_blob(&repo, &digest, 5, 1).await.expect("link");
        store.close().await;
    }
    let store = PostgresStore::open(&url, PoolSettings::default())
        .await
        .expect("reopen");
    assert_eq!(
        store.blob_size(&repo, &digest).await.expect("query"),
        Some(5)
    );
}

#[tokio::test]
async fn a_lost_database_is_unavailable_not_internal() {
    let cluster = Cluster::start();
    let store = cluster.store().await;
    let repo: RepositoryName = "gone/app".parse().expect("valid");
    let digest = Digest::sha256_from_bytes(&[7; 32]);
    store.link_blob(&repo, &digest, 1, 1).await.expect("link");
    cluster.stop();
    match store.blob_size(&repo, &digest).await {
        Err(Error::Unavailable(_)) => {}
        other => panic!("expected Unavailable once the server stopped, got {other:?}"),
    }

    let settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(2),
    };
    match PostgresStore::open(&cluster.url("postgres"), settings).await {
        Err(Error::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable for a refused connection, got {other:?}"),
        Ok(_) => panic!("opened a store on a stopped server"),
    }
}
