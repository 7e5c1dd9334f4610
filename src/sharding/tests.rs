use super::*;

const THREE_SHARDS: &str = r#"
buckets = 16384
[[shards]]
name = "shard-1"
url = "postgres://sw@127.0.0.1:5441/shardwallet"
buckets = ["0-5460"]
[[shards]]
name = "shard-2"
url = "postgres://sw@127.0.0.1:5442/shardwallet"
buckets = ["5461-10921"]
[[shards]]
name = "shard-3"
url = "postgres://sw@127.0.0.1:5443/shardwallet"
buckets = ["10922-16383"]
"#;

fn parse(text: &str) -> Result<ShardMap, Error> {
    ShardMap::parse(text, |_| None)
}

fn error_text(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("map was accepted"),
        Err(e) => e.to_string(),
    }
}

/// These values are the routing contract: changing any of them re-routes users away
/// from the shard that holds their money. They must never change between versions.
/// (xxh3_64 of "" is the reference value 0x2d06800538d394c2 published with XXH3.)
#[test]
fn bucket_golden_vectors_never_change() {
    let golden: &[(&str, u64, u32)] = &[
        ("", 0x2d06800538d394c2, 5314),
        ("alice", 5593767425381308080, 5808),
        ("bob", 1442208253991303397, 14565),
        ("carol", 16356433469892447140, 2980),
        ("user_000001", 5461509729213014107, 8283),
    ];
    for (user, hash, bucket) in golden {
        assert_eq!(xxhash_rust::xxh3::xxh3_64(user.as_bytes()), *hash, "hash of {user:?}");
        assert_eq!(bucket_of(user, 16384), *bucket, "bucket of {user:?}");
    }
    let map = parse(THREE_SHARDS).expect("valid map");
    assert_eq!(map.shard_of_bucket(map.bucket_of("alice")), Some(1));
    assert_eq!(map.shard_of_bucket(map.bucket_of("bob")), Some(2));
    assert_eq!(map.shard_of_bucket(map.bucket_of("carol")), Some(0));
}

#[test]
fn valid_map_routes_every_bucket() {
    let map = parse(THREE_SHARDS).expect("valid map");
    assert_eq!(map.shard_of_bucket(0), Some(0));
    assert_eq!(map.shard_of_bucket(5460), Some(0));
    assert_eq!(map.shard_of_bucket(5461), Some(1));
    assert_eq!(map.shard_of_bucket(16383), Some(2));
    assert_eq!(map.shard_of_bucket(16384), None);
}

#[test]
fn a_gap_is_rejected_and_named() {
    let text = THREE_SHARDS.replace("\"5461-10921\"", "\"5461-10000\"");
    assert_eq!(error_text(&text), "shard map entry buckets: buckets 10001-10921 are owned by no shard");
}

#[test]
fn an_overlap_is_rejected_and_names_both_shards() {
    let text = THREE_SHARDS.replace("\"5461-10921\"", "\"5000-10921\"");
    let err = error_text(&text);
    assert!(err.contains("shards[1] (shard-2)"), "{err}");
    assert!(err.contains("bucket 5000"), "{err}");
    assert!(err.contains("also owned by shard 'shard-1'"), "{err}");
}

#[test]
fn duplicate_shard_names_are_rejected() {
    let text = THREE_SHARDS.replace("name = \"shard-3\"", "name = \"shard-1\"");
    assert!(error_text(&text).contains("duplicate shard name 'shard-1'"));
}

#[test]
fn a_bad_connection_string_is_rejected_and_named() {
    let text = THREE_SHARDS.replace("postgres://sw@127.0.0.1:5442/shardwallet", "postgres://sw@127.0.0.1:notaport/x");
    let err = error_text(&text);
    assert!(err.starts_with("shard map entry shards[1] (shard-2): bad connection string"), "{err}");
}

#[test]
fn a_range_past_the_last_bucket_is_rejected() {
    let text = THREE_SHARDS.replace("\"10922-16383\"", "\"10922-16384\"");
    assert!(error_text(&text).contains("goes past the last bucket 16383"));
}

#[test]
fn an_unknown_field_or_bad_range_is_rejected() {
    assert!(error_text(&THREE_SHARDS.replace("\"0-5460\"", "\"5460-0\"")).contains("bad bucket range '5460-0'"));
    assert!(error_text(&format!("{THREE_SHARDS}\nreplicas = 2\n")).contains("unknown field"));
}

#[test]
fn password_comes_from_the_override_and_is_not_printed() {
    let map = ShardMap::parse(THREE_SHARDS, |name| (name == "shard-2").then(|| "s3cret".to_string())).expect("valid");
    assert_eq!(map.shards()[1].config.get_password(), Some(&b"s3cret"[..]));
    assert_eq!(map.shards()[0].config.get_password(), None);
    assert!(!format!("{map:?}").contains("s3cret"));
    assert_eq!(password_env_var("shard-2"), "SHARDWALLET_SHARD_SHARD_2_PASSWORD");
}

#[test]
fn fingerprint_follows_routing_not_hosts() {
    let a = parse(THREE_SHARDS).expect("valid");
    let moved = parse(&THREE_SHARDS.replace("127.0.0.1:5443", "db3.internal:5432")).expect("valid");
    assert_eq!(a.fingerprint(), moved.fingerprint());
    let rerouted = parse(&THREE_SHARDS.replace("\"0-5460\"", "\"0-5459\"").replace("\"5461-10921\"", "\"5460-10921\""))
        .expect("valid");
    assert_ne!(a.fingerprint(), rerouted.fingerprint());
}
