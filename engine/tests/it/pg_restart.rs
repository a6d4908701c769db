//! The engine rides out PostgreSQL crashes: the server is stopped with
//! `pg_ctl -m immediate` and restarted twice while transfers run.

use std::time::Duration;

use tandem::testing::PgCluster;
use tandem::{Engine, PgStorage};

use crate::support::{self, PgApp, Transfer, TransferInput};

#[tokio::test]
async fn in_flight_workflows_finish_exactly_once_across_server_crashes() {
    let cluster = PgCluster::start_owned().await.unwrap();
    let url = cluster.create_database().await.unwrap();
    let storage = PgStorage::connect(&url).await.unwrap();
    let bank = PgApp::bank_on(&storage, 10, 1_000).await;
    let engine = Engine::builder(storage)
        .register(Transfer {
            app: bank.app.clone(),
        })
        .launch()
        .await
        .unwrap();

    // Notification delays of up to ~6 s keep workflows in flight across
    // both crashes, however long a restart takes on a loaded machine.
    let transfers: Vec<TransferInput> = support::transfers(150, 10)
        .into_iter()
        .enumerate()
        .map(|(i, t)| TransferInput {
            notify_delay_ms: 50 + (i % 30) as u64 * 200,
            ..t
        })
        .collect();
    let mut handles = Vec::new();
    for t in &transfers {
        handles.push(engine.start::<Transfer<PgApp>>(t.clone()).await.unwrap());
    }
    let ids: Vec<String> = handles.iter().map(|h| h.workflow_id().to_owned()).collect();

    for crash in 0..2 {
        support::sleep(Duration::from_millis(400)).await;
        let finished = bank
            .scalar("SELECT count(*) FROM tandem.workflows WHERE status = 'SUCCESS'")
            .await;
        assert!(
            (finished as usize) < transfers.len(),
            "crash {crash} lands while workflows run"
        );
        cluster.stop_immediate().unwrap();
        support::sleep(Duration::from_millis(500)).await;
        cluster.restart().unwrap();
    }

    for handle in &handles {
        handle.result().await.unwrap();
    }
    support::assert_transfers_exact(&bank, &ids, &transfers).await;
    engine.shutdown().await;
}
