//! The hot-store conformance suite: every [`HotStore`] implementation must pass each case.

use super::*;

fn stores() -> Vec<(Box<dyn HotStore>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = RocksStore::open(dir.path(), &RocksStoreOptions::default()).expect("open rocks");
    vec![(Box::new(MemoryStore::new()), None), (Box::new(rocks), Some(dir))]
}

fn put(store: &dyn HotStore, k: &[u8], v: &[u8]) {
    let mut b = WriteBatch::new();
    b.put(k, v);
    store.write(b, Durability::Sync).expect("write");
}

#[test]
fn get_returns_last_put_and_none_after_delete() {
    for (store, _dir) in stores() {
        let name = store.engine_name();
        assert_eq!(store.get(b"a").expect("get"), None, "{name}");
        put(&*store, b"a", b"1");
        put(&*store, b"a", b"2");
        assert_eq!(store.get(b"a").expect("get"), Some(b"2".to_vec()), "{name}");
        let mut b = WriteBatch::new();
        b.delete(b"a".to_vec());
        store.write(b, Durability::Sync).expect("delete");
        assert_eq!(store.get(b"a").expect("get"), None, "{name}");
    }
}

#[test]
fn scan_is_ordered_and_half_open() {
    for (store, _dir) in stores() {
        let name = store.engine_name();
        for k in [b"b3".as_slice(), b"a", b"b1", b"b2", b"c"] {
            put(&*store, k, k);
        }
        let keys: Vec<Vec<u8>> = store.scan(b"b", b"b3").expect("scan").into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"b1".to_vec(), b"b2".to_vec()], "{name}");
        assert!(store.scan(b"z", b"a").expect("empty").is_empty(), "{name}: inverted range is empty");
        let all = store.scan(b"", &[0xff]).expect("all");
        assert_eq!(all.len(), 5, "{name}");
        assert_eq!(all[0], (b"a".to_vec(), b"a".to_vec()), "{name}");
        let last: Vec<Vec<u8>> =
            store.scan_reverse(b"b", b"b3", 1).expect("reverse").into_iter().map(|(k, _)| k).collect();
        assert_eq!(last, vec![b"b2".to_vec()], "{name}: reverse scan starts at the largest key below the end");
        let both: Vec<Vec<u8>> =
            store.scan_reverse(b"b", b"c", 10).expect("reverse").into_iter().map(|(k, _)| k).collect();
        assert_eq!(both, vec![b"b3".to_vec(), b"b2".to_vec(), b"b1".to_vec()], "{name}: and stops at the start");
        assert!(store.scan_reverse(b"z", b"a", 5).expect("empty").is_empty(), "{name}");
    }
}

#[test]
fn write_batch_is_atomic_and_ordered() {
    for (store, _dir) in stores() {
        let name = store.engine_name();
        put(&*store, b"k1", b"old");
        let mut b = WriteBatch::new();
        b.put(b"k2".to_vec(), b"v2".to_vec());
        b.delete(b"k1".to_vec());
        b.put(b"k1".to_vec(), b"new".to_vec());
        assert_eq!(b.ops().len(), 3);
        store.write(b, Durability::Buffered).expect("batch");
        assert_eq!(store.get(b"k1").expect("get"), Some(b"new".to_vec()), "{name}: later op wins");
        assert_eq!(store.get(b"k2").expect("get"), Some(b"v2".to_vec()), "{name}");
    }
}

#[test]
fn delete_range_removes_exactly_the_range() {
    for (store, _dir) in stores() {
        let name = store.engine_name();
        for k in [b"t1/a".as_slice(), b"t1/b", b"t2/a", b"t0/z"] {
            put(&*store, k, b"x");
        }
        let mut b = WriteBatch::new();
        b.delete_range(b"t1/".to_vec(), b"t1/\xff".to_vec());
        store.write(b, Durability::Sync).expect("range delete");
        let keys: Vec<Vec<u8>> = store.scan(b"", &[0xff]).expect("scan").into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"t0/z".to_vec(), b"t2/a".to_vec()], "{name}");
    }
}

#[test]
fn snapshot_does_not_see_later_writes() {
    for (store, _dir) in stores() {
        let name = store.engine_name();
        put(&*store, b"a", b"1");
        let snap = store.snapshot();
        put(&*store, b"a", b"2");
        put(&*store, b"b", b"1");
        assert_eq!(snap.get(b"a").expect("get"), Some(b"1".to_vec()), "{name}");
        assert_eq!(snap.get(b"b").expect("get"), None, "{name}");
        assert_eq!(snap.scan(b"", &[0xff]).expect("scan").len(), 1, "{name}");
        drop(snap);
        assert_eq!(store.get(b"a").expect("get"), Some(b"2".to_vec()), "{name}");
    }
}

#[test]
fn large_values_round_trip() {
    for (store, _dir) in stores() {
        let name = store.engine_name();
        let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
        put(&*store, b"big", &big);
        assert_eq!(store.get(b"big").expect("get").as_deref(), Some(big.as_slice()), "{name}");
        assert!(store.size_bytes() > 0, "{name}: size counts stored bytes");
    }
}

#[test]
fn rocks_store_keeps_synced_writes_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = RocksStore::open(dir.path(), &RocksStoreOptions::default()).expect("open");
        put(&store, b"durable", b"yes");
    }
    let store = RocksStore::open(dir.path(), &RocksStoreOptions::default()).expect("reopen");
    assert_eq!(store.get(b"durable").expect("get"), Some(b"yes".to_vec()));
}
