//! The fleet's two stores (`fleet::db`): the embedded one and PostgreSQL, a real cluster of
//! the test's own on 127.0.0.1 (`ferry_fixtures::postgres`). The same operations give the
//! same answers on both; PostgreSQL's own duties: a schema made once however many replicas
//! start together, a newer schema refused, a database that restarts survived, errors that
//! name the database without its password.

use ferry_fixtures::postgres::Postgres;
use ferry_publisher::fleet::db::{FleetDb, Location};
use ferry_publisher::fleet::{Caller, Fleet, FleetError, Settings, TokenKind};
use ferry_store::kv::Op;

const TABLES: [&str; 2] = ["one", "two"];

fn put(table: &'static str, key: &[u8], value: &[u8]) -> Op {
    Op::Put { table, key: key.to_vec(), value: value.to_vec() }
}

/// Every answer of one sequence of operations, to compare the stores by.
fn exercise(db: &FleetDb) -> Vec<String> {
    let mut seen = Vec::new();
    let mut note = |what: &str, v: &dyn std::fmt::Debug| seen.push(format!("{what}: {v:?}"));
    note("empty get", &db.get("one", b"a").unwrap());
    note("empty last", &db.last("one").unwrap());
    db.write(vec![
        put("one", b"dev/a", b"1"),
        put("one", b"dev/b", b"2"),
        put("one", b"dev0", b"past the prefix"),
        put("one", b"de", b"before it"),
        put("one", &[0xff, 0xff], b"high"),
        put("one", &[0xff, 0xff, 0x00], b"higher"),
        put("two", b"dev/a", b"other table"),
    ])
    .unwrap();
    note("get", &db.get("one", b"dev/a").unwrap());
    note("scan dev/", &db.scan("one", b"dev/").unwrap());
    note("scan all", &db.scan("one", b"").unwrap());
    note("scan ff", &db.scan("one", &[0xff]).unwrap());
    note("scan two", &db.scan("two", b"dev").unwrap());
    note("last", &db.last("one").unwrap());
    // A batch is all or nothing, later ops in it see earlier ones' keys replaced.
    db.write(vec![
        put("one", b"dev/a", b"3"),
        Op::Delete { table: "one", key: b"dev/b".to_vec() },
        put("one", b"dev/a", b"4"),
    ])
    .unwrap();
    note("after batch", &db.scan("one", b"dev/").unwrap());
    db.write(vec![Op::Delete { table: "one", key: b"absent".to_vec() }]).unwrap();
    note("empty value", &{
        db.write(vec![put("one", b"e", b"")]).unwrap();
        db.get("one", b"e").unwrap()
    });
    seen
}

#[test]
fn both_stores_answer_the_same_operations_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = FleetDb::open(&Location::Dir(dir.path().join("kv")), &TABLES).unwrap();
    let pg = Postgres::start(false).unwrap();
    let url = pg.create_database("same").unwrap();
    let postgres = FleetDb::open(&Location::Postgres(url), &TABLES).unwrap();
    let (a, b) = (exercise(&embedded), exercise(&postgres));
    assert_eq!(a, b);
    assert!(a.iter().any(|l| l.starts_with("scan dev/") && l.contains("100, 101, 118, 47, 98")), "{a:?}");
}

#[test]
fn replicas_starting_together_make_the_schema_once() {
    let pg = Postgres::start(false).unwrap();
    let url = pg.create_database("fleet").unwrap();
    let at = Location::parse(&url);
    let fleets: Vec<Fleet> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| Fleet::open(&at, Settings::default()))).collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows: i64 = c.query_one("SELECT count(*) FROM ferry_schema", &[]).unwrap().get(0);
    assert_eq!(rows, 1);
    // Each replica sees what another wrote.
    fleets[0].create_token(&Caller::Local, TokenKind::Admin, "ops").unwrap();
    assert_eq!(fleets[5].tokens().unwrap().len(), 1);

    // A schema from a newer ferry is refused, by name, before anything is written.
    c.execute("UPDATE ferry_schema SET version = 99", &[]).unwrap();
    let e = Fleet::open(&at, Settings::default()).unwrap_err().to_string();
    assert!(e.contains("version 99") && e.contains("upgrade ferry"), "{e}");
}

#[test]
fn a_database_that_restarts_is_reconnected_and_errors_say_unavailable() {
    let mut pg = Postgres::start(false).unwrap();
    let url = pg.create_database("fleet").unwrap();
    let f = Fleet::open(Location::parse(&url), Settings::default()).unwrap();
    f.create_token(&Caller::Local, TokenKind::Admin, "before").unwrap();
    pg.stop();
    // Down: an error the API answers with 503 (devices retry), naming the database.
    let e = f.tokens().unwrap_err();
    assert!(matches!(e, FleetError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{}", pg.port())), "{e}");
    pg.restart().unwrap();
    // Up again: the pool drops the broken connections and connects anew.
    let mut names = None;
    for _ in 0..3 {
        match f.tokens() {
            Ok(t) => {
                names = Some(t.into_iter().map(|t| t.name).collect::<Vec<_>>());
                break;
            }
            Err(FleetError::Unavailable(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(names, Some(vec!["before".to_string()]));
    f.create_token(&Caller::Local, TokenKind::Admin, "after").unwrap();
}

#[test]
fn bad_urls_and_empty_databases_are_named_without_the_password() {
    let pg = Postgres::start(false).unwrap();
    let empty = pg.create_database("empty").unwrap();
    // Reading a database that holds no fleet creates nothing and says so.
    let e = Fleet::open_read_only(Location::parse(&empty)).unwrap_err().to_string();
    assert!(e.contains("holds no Ferry fleet"), "{e}");
    let mut c = postgres::Client::connect(&empty, postgres::NoTls).unwrap();
    let tables: i64 = c
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
    // A wrong password (the cluster trusts loopback, so: a database that does not exist)
    // and a URL that does not parse are named, the password never shown.
    let url = format!("postgres://ferry:hunter2@127.0.0.1:{}/nosuch", pg.port());
    let e = Fleet::open(Location::parse(&url), Settings::default()).unwrap_err().to_string();
    assert!(e.contains("nosuch") && e.contains("***") && !e.contains("hunter2"), "{e}");
    let e = Fleet::open(Location::parse("postgres://ferry:hunter2@127.0.0.1:notaport/x"), Settings::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fleet database URL") && !e.contains("hunter2"), "{e}");
    // Nothing listens: refused within the connect timeout, as unavailable.
    let port = ferry_fixtures::daemon::free_ports(1).unwrap()[0];
    let url = format!("postgres://ferry@127.0.0.1:{port}/fleet");
    let started = std::time::Instant::now();
    let e = Fleet::open(Location::parse(&url), Settings::default()).unwrap_err();
    assert!(matches!(e, FleetError::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
