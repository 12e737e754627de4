//! Upgrade: a data directory written by the previous release (`tests/fixtures/format-3`, left by
//! `examples/format-fixture.rs`) opens in this build with every row, hot and cold, and takes writes.

use std::path::Path;

use arrow::array::{Array, Float64Array, Int64Array, StringArray};
use quiver_node::Quiver;
use quiver_node::fixture;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

async fn rows(db: &Quiver) -> Vec<(i64, String, Option<f64>)> {
    let batches = db.query("SELECT id, name, v FROM fixture_rows ORDER BY id").await.expect("select");
    let mut out = Vec::new();
    for b in &batches {
        let id = b.column(0).as_any().downcast_ref::<Int64Array>().expect("id");
        let name = b.column(1).as_any().downcast_ref::<StringArray>().expect("name");
        let v = b.column(2).as_any().downcast_ref::<Float64Array>().expect("v");
        for i in 0..b.num_rows() {
            out.push((id.value(i), name.value(i).to_string(), (!v.is_null(i)).then(|| v.value(i))));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_releases_data_directory_opens_with_every_row_and_takes_writes() {
    let fixture_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-3");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("db");
    copy_dir(&fixture_dir, &dir);

    let db = Quiver::open(&dir).await.expect("the previous release's directory opens");
    let expected: Vec<(i64, String, Option<f64>)> = (1..=fixture::ROWS)
        .map(|id| {
            let (name, v) = fixture::row(id);
            (id, name, v)
        })
        .collect();
    assert_eq!(rows(&db).await, expected, "every row, cold and hot, as written");
    let accounts = db.query("SELECT id, balance FROM fixture_accounts ORDER BY id").await.expect("accounts");
    let got: Vec<(i64, i64)> = accounts
        .iter()
        .flat_map(|b| {
            let id = b.column(0).as_any().downcast_ref::<Int64Array>().expect("id").clone();
            let balance = b.column(1).as_any().downcast_ref::<Int64Array>().expect("balance").clone();
            (0..b.num_rows()).map(move |i| (id.value(i), balance.value(i)))
        })
        .collect();
    assert_eq!(got, fixture::ACCOUNTS, "the UPDATE and DELETE as they were applied");

    // It takes writes and keeps them across a reopen.
    let next = fixture::ROWS + 1;
    db.query(&format!("INSERT INTO fixture_rows VALUES ({next}, 'after', 1.5)")).await.expect("insert");
    db.close().await.expect("close");
    let db = Quiver::open(&dir).await.expect("reopen");
    let all = rows(&db).await;
    assert_eq!(all.len() as i64, next);
    assert_eq!(all.last(), Some(&(next, "after".to_string(), Some(1.5))));
    db.close().await.expect("close");
}
