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
    // Conditions: a batch whose condition fails writes nothing of itself.
    let refused = |r: Result<(), FleetError>| match r {
        Err(FleetError::Store(e @ ferry_store::StoreError::KvConflict { .. })) => e.to_string(),
        other => panic!("expected a conflict, got {other:?}"),
    };
    note(
        "insert taken",
        &refused(db.write(vec![
            put("one", b"x", b"1"),
            Op::Insert { table: "one", key: b"dev/a".to_vec(), value: b"9".to_vec() },
        ])),
    );
    note(
        "expect stale",
        &refused(db.write(vec![
            Op::Expect { table: "one", key: b"dev/a".to_vec(), value: Some(b"3".to_vec()) },
            put("one", b"y", b"1"),
        ])),
    );
    note(
        "expect absent but there",
        &refused(db.write(vec![Op::Expect { table: "one", key: b"de".to_vec(), value: None }, put("one", b"z", b"1")])),
    );
    note(
        "nothing of them written",
        &(db.get("one", b"x").unwrap(), db.get("one", b"y").unwrap(), db.get("one", b"z").unwrap()),
    );
    db.write(vec![
        Op::Expect { table: "one", key: b"dev/a".to_vec(), value: Some(b"4".to_vec()) },
        Op::Expect { table: "one", key: b"absent".to_vec(), value: None },
        Op::Insert { table: "one", key: b"new".to_vec(), value: b"n".to_vec() },
        put("one", b"dev/a", b"5"),
    ])
    .unwrap();
    note("conditions held", &(db.get("one", b"dev/a").unwrap(), db.get("one", b"new").unwrap()));
    note("empty value", &{
        db.write(vec![put("one", b"e", b"")]).unwrap();
        db.get("one", b"e").unwrap()
    });
    // Pages: at most `limit`, strictly after `after`, within the prefix.
    note("page first 2", &db.page("one", b"", None, 2).unwrap());
    note("page after dev/a", &db.page("one", b"dev", Some(b"dev/a"), 10).unwrap());
    note("page after a key before the prefix", &db.page("one", b"dev", Some(b"a"), 10).unwrap());
    note("page after the prefix's keys", &db.page("one", b"dev", Some(b"dev1"), 10).unwrap());
    note("page past the end", &db.page("one", b"", Some(&[0xff, 0xff, 0x00]), 10).unwrap());
    note("page of ff", &db.page("one", &[0xff], None, 1).unwrap());
    // Counters: absent is 0, adds in one batch add up, negative works, and a batch whose
    // condition fails adds nothing.
    note("counter absent", &db.counter("two", b"n").unwrap());
    db.write(vec![
        Op::Add { table: "two", key: b"n".to_vec(), delta: 5 },
        Op::Add { table: "two", key: b"n".to_vec(), delta: -7 },
    ])
    .unwrap();
    note("counter", &db.counter("two", b"n").unwrap());
    note(
        "counter under a failed condition",
        &refused(db.write(vec![
            Op::Add { table: "two", key: b"n".to_vec(), delta: 100 },
            Op::Expect { table: "one", key: b"e".to_vec(), value: None },
        ])),
    );
    note("counter unchanged", &db.counter("two", b"n").unwrap());
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
    assert!(a.contains(&"counter: -2".to_string()), "{a:?}");
    assert!(a.contains(&"counter unchanged: -2".to_string()), "{a:?}");
    let page = a.iter().find(|l| l.starts_with("page after dev/a")).unwrap();
    assert!(page.contains("[100, 101, 118, 48]") && !page.contains("[100, 101, 118, 47, 97]"), "{page}");
}

/// Counters added to from many threads through two servers on one database (or one
/// embedded store) lose no addition.
#[test]
fn counters_added_to_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = FleetDb::open(&Location::Dir(dir.path().join("kv")), &TABLES).unwrap();
    let pg = Postgres::start(false).unwrap();
    let at = Location::Postgres(pg.create_database("counters").unwrap());
    let (p1, p2) = (FleetDb::open(&at, &TABLES).unwrap(), FleetDb::open(&at, &TABLES).unwrap());
    for (what, dbs) in [("embedded", [&embedded, &embedded]), ("postgres", [&p1, &p2])] {
        std::thread::scope(|s| {
            for i in 0..6 {
                let db = dbs[i % 2];
                s.spawn(move || {
                    for _ in 0..50 {
                        db.write(vec![
                            Op::Add { table: "two", key: b"c".to_vec(), delta: 1 },
                            Op::Add { table: "two", key: b"d".to_vec(), delta: -2 },
                        ])
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!((dbs[0].counter("two", b"c").unwrap(), dbs[1].counter("two", b"d").unwrap()), (300, -600), "{what}");
    }
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
    let versions = |c: &mut postgres::Client| -> Vec<i32> {
        c.query("SELECT version FROM ferry_schema ORDER BY version", &[]).unwrap().iter().map(|r| r.get(0)).collect()
    };
    assert_eq!(versions(&mut c), vec![1, 2], "each step of the schema made once");
    // Each replica sees what another wrote.
    fleets[0].create_token(&Caller::Local, TokenKind::Admin, "ops").unwrap();
    assert_eq!(fleets[5].tokens().unwrap().len(), 1);
    // A database of schema 1 (before rollout counters) is raised to 2 by the next start,
    // keeping what it holds.
    c.execute("DELETE FROM ferry_schema WHERE version = 2", &[]).unwrap();
    let f = Fleet::open(&at, Settings::default()).unwrap();
    assert_eq!(versions(&mut c), vec![1, 2]);
    assert_eq!(f.tokens().unwrap().len(), 1);

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
    // Down: an error the API answers with 503 (devices retry); the server's log names the
    // database.
    let e = f.tokens().unwrap_err();
    assert!(matches!(e, FleetError::Database(_)), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{}", pg.port())), "{e}");
    pg.restart().unwrap();
    // Up again: the pooled connection, broken by the restart, is replaced at the first read.
    let names: Vec<String> = f.tokens().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["before".to_string()]);
    f.create_token(&Caller::Local, TokenKind::Admin, "after").unwrap();
    // A restart while connections sit idle in the pool: each is checked before it is lent
    // once idle for a while, so not even the first change after it fails.
    pg.restart().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(6));
    f.create_token(&Caller::Local, TokenKind::Admin, "after-restart").unwrap();
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
    assert!(matches!(e, FleetError::Database(_)), "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// Two `ferry serve` replicas on one database, as two handles of the fleet: what both
/// change at the same moment.
fn replicas() -> (Postgres, Fleet, Fleet) {
    let pg = Postgres::start(false).unwrap();
    let at = Location::parse(&pg.create_database("fleet").unwrap());
    // The tests enroll more than the default rate allows (which the replicas share).
    let settings = Settings { enrollments_per_minute: 10_000, ..Settings::default() };
    let a = Fleet::open(&at, settings.clone()).unwrap();
    let b = Fleet::open(&at, settings).unwrap();
    (pg, a, b)
}

#[test]
fn replicas_writing_at_once_number_the_audit_log_without_a_hole_or_an_overwrite() {
    let (_pg, a, b) = replicas();
    std::thread::scope(|s| {
        for (name, f) in [("a", &a), ("b", &b), ("a2", &a), ("b2", &b)] {
            s.spawn(move || {
                for i in 0..30 {
                    f.record(&Caller::Local, "test", format!("{name} {i}")).unwrap();
                }
            });
        }
    });
    let log = a.audit(1000).unwrap();
    assert_eq!(log.len(), 120);
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=120).collect::<Vec<u64>>());
    let mut details: Vec<&str> = log.iter().map(|e| e.detail.as_str()).collect();
    details.sort();
    details.dedup();
    assert_eq!(details.len(), 120, "an entry was overwritten");
}

/// Four threads per replica enrolling without a pause (each enrollment reads and writes
/// the audit log's end and the rate limit): every one lands, none is refused after being
/// raced again and again by the other replica's writers (they queue for one turn).
#[test]
fn replicas_under_sustained_writes_do_not_starve_each_other() {
    let (_pg, a, b) = replicas();
    let enrollment = a.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (f, enrollment) = (if t % 2 == 0 { &a } else { &b }, &enrollment);
            s.spawn(move || {
                for i in 0..40 {
                    f.enroll(&format!("SN-{t}-{i:02}"), "rev-a", enrollment, None).unwrap();
                }
            });
        }
    });
    assert_eq!(b.devices().unwrap().len(), 320);
    let seqs: Vec<u64> = a.audit(1000).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=321).collect::<Vec<u64>>());
    // Writers that take turns seldom find what they read changed.
    let races = a.races() + b.races();
    eprintln!("320 enrollments through two replicas read again {races} times");
    assert!(races < 32, "{races} enrollments read again");
}

#[test]
fn of_two_replicas_changing_a_rollout_or_configuration_at_once_each_change_lands_once() {
    use ferry_publisher::fleet::{HeadDoc, RolloutAction, RolloutState, Scope};
    let (_pg, a, b) = replicas();
    let base = HeadDoc { id: "doc-1".into(), serial: 1, targets: Default::default() };
    for round in 0..5 {
        // Both start a rollout on the same channel: one wins, the other is told why.
        let started: Vec<Result<_, FleetError>> = std::thread::scope(|s| {
            let h: Vec<_> = [&a, &b]
                .into_iter()
                .map(|f| s.spawn(|| f.start_rollout(&Caller::Local, "stable", &base, 10, None, 10)))
                .collect();
            h.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = started.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {started:?}");
        assert!(
            started.iter().any(|r| matches!(r, Err(FleetError::BadRequest(m)) if m.contains("has a rollout"))),
            "{started:?}"
        );
        // Both raise it at once, to different shares: both land, in some order, and the
        // rollout ends at one of them (never a mix of the two).
        std::thread::scope(|s| {
            s.spawn(|| a.change_rollout(&Caller::Local, "stable", RolloutAction::SetPercent, Some(40)).unwrap());
            s.spawn(|| b.change_rollout(&Caller::Local, "stable", RolloutAction::Pause, None).unwrap());
        });
        let r = a.rollout("stable").unwrap().unwrap();
        assert_eq!((r.percent, r.state), (40, RolloutState::Paused), "both changes land");
        a.change_rollout(&Caller::Local, "stable", RolloutAction::Abort, None).unwrap();
    }
    // Configuration changed through both at once: every change gets a version of its own.
    let versions: Vec<u64> = std::thread::scope(|s| {
        let h: Vec<_> = (0..40)
            .map(|i| {
                let f = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    f.set_config(&Caller::Local, &Scope::Fleet, &[(format!("K{i}"), "v".into())], &[]).unwrap()
                })
            })
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut unique = versions.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 40, "{versions:?}");
    assert_eq!(b.level(&Scope::Fleet).unwrap().values.len(), 40, "a key was lost");
}

#[test]
fn a_revocation_through_one_replica_is_not_undone_by_a_check_in_through_the_other() {
    use ferry_publisher::fleet::{DeviceState, Report};
    let (_pg, a, b) = replicas();
    let enrollment = a.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
    for i in 0..10 {
        let serial = format!("SN-{i}");
        let token = b.enroll(&serial, "rev-a", &enrollment, None).unwrap().device_token;
        let stop = std::sync::atomic::AtomicBool::new(false);
        // The device checks in through replica B as fast as it can, with the record it
        // authenticated with before the revocation.
        let d = b.device_for(&token).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                // Each report differs from the last, so each check-in also writes an event
                // (rows of the device's history as well as its record).
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                    n += 1;
                    let report = Report {
                        last_result: Some(if n.is_multiple_of(2) { "updated" } else { "failed" }.into()),
                        last_error: Some(format!("attempt {n}")),
                        ..Report::default()
                    };
                    match b.check_in(&d, report) {
                        Ok(_) => {}
                        Err(FleetError::Forbidden(_)) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(5));
            // However often the device checks in, the revocation lands (first try or after
            // a few reads again), and the check-ins stop either way.
            let revoked = a.revoke(&Caller::Local, &serial);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            revoked.unwrap();
        });
        assert_eq!(a.device(&serial).unwrap().state, DeviceState::Revoked, "{serial}");
        assert!(b.device_for(&token).is_err(), "{serial}'s token still works");
    }
}

#[test]
fn a_serial_enrolled_through_two_replicas_at_once_is_one_device() {
    use ferry_publisher::fleet::DeviceState;
    let (_pg, a, b) = replicas();
    let enrollment = a.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
    for i in 0..10 {
        let serial = format!("SN-{i}");
        let both: Vec<_> = std::thread::scope(|s| {
            let h: Vec<_> =
                [&a, &b].into_iter().map(|f| s.spawn(|| f.enroll(&serial, "rev-a", &enrollment, None))).collect();
            h.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        // One enrolled it; the other found it known and made a re-enrollment request.
        let mut states: Vec<_> = both.iter().map(|e| e.state).collect();
        states.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(states, vec![Some(DeviceState::Accepted), Some(DeviceState::Pending)], "{serial}");
        let d = a.device(&serial).unwrap();
        assert!(d.reenrollment.is_some(), "{serial}");
        let accepted = both.iter().find(|e| e.state == Some(DeviceState::Accepted)).unwrap();
        assert_eq!(b.device_for(&accepted.device_token).unwrap().serial, serial);
    }
}

#[test]
fn a_device_removed_through_one_replica_keeps_no_configuration_set_through_the_other() {
    use ferry_publisher::fleet::Scope;
    let (_pg, a, b) = replicas();
    let enrollment = a.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
    for i in 0..10 {
        let serial = format!("SN-{i}");
        a.enroll(&serial, "rev-a", &enrollment, None).unwrap();
        let scope = Scope::Device(serial.clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                // The operator sets a secret for the device while another removes it: the
                // change lands before the removal (which then deletes it) or is refused.
                match b.set_config(&Caller::Local, &scope, &[("API_KEY".into(), "s3cret".into())], &[]) {
                    Ok(_) | Err(FleetError::NotFound(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            });
            s.spawn(|| a.remove(&Caller::Local, &serial).unwrap());
        });
        assert!(matches!(a.device(&serial), Err(FleetError::NotFound(_))));
        assert!(a.level(&scope).unwrap().values.is_empty(), "{serial}'s configuration outlived it");
    }
}

#[test]
fn a_database_that_stops_answering_costs_each_call_a_bounded_wait() {
    let pg = Postgres::start(false).unwrap();
    let url = pg.create_database("fleet").unwrap();
    let f = Fleet::open(Location::parse(&url), Settings::default()).unwrap();
    f.create_token(&Caller::Local, TokenKind::Admin, "ops").unwrap();
    // Another session holds the table: every statement of the server waits on it, as on
    // a database that accepts connections and never answers.
    let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE ferry_kv IN ACCESS EXCLUSIVE MODE").unwrap();
    // More callers than the pool has connections (16): each gets an answer, a 503 for the
    // API, within the statement timeout (10 s) plus the pool's wait (5 s); the 8 past the
    // pool are told so at 5 s, before any connection is given back at 10 s.
    let started = std::time::Instant::now();
    let answers: Vec<(Result<usize, FleetError>, std::time::Duration)> = std::thread::scope(|s| {
        let h: Vec<_> = (0..24)
            .map(|_| {
                s.spawn(|| {
                    let r = f.tokens().map(|t| t.len());
                    (r, started.elapsed())
                })
            })
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, took) in &answers {
        assert!(matches!(r, Err(FleetError::Database(_))), "{r:?}");
        assert!(*took < std::time::Duration::from_secs(30), "{took:?}");
    }
    let queued = answers.iter().filter(|(r, _)| format!("{r:?}").contains("connections busy")).count();
    assert_eq!(queued, 24 - ferry_publisher::fleet::db::MAX_CONNECTIONS, "the callers past the pool waited for it");
    tx.rollback().unwrap();
    assert_eq!(f.tokens().unwrap().len(), 1, "answers again once the table is free");
}

/// A rollout's figures come from counters its devices' check-ins keep (no check-in reads the
/// fleet): through two servers at once, with each device checking in through both, every
/// device that took the release counts once, every failure once, the halt fires when the
/// share passes the limit, and a device removed leaves the counts.
#[test]
fn a_rollout_s_counters_count_each_device_once_through_two_replicas_and_halt_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings { enrollments_per_minute: 10_000, ..Settings::default() };
    let embedded = Fleet::open(&dir.path().join("fleet"), settings.clone()).unwrap();
    let pg = Postgres::start(false).unwrap();
    let at = Location::parse(&pg.create_database("fleet").unwrap());
    let (a, b) = (Fleet::open(&at, settings.clone()).unwrap(), Fleet::open(&at, settings).unwrap());
    rollout_counters(&embedded, &embedded);
    rollout_counters(&a, &b);
}

fn rollout_counters(a: &Fleet, b: &Fleet) {
    use ferry_publisher::fleet::{HeadDoc, Pick, Report, RolloutState};
    const N: usize = 60;
    let enrollment = a.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
    let tokens: Vec<String> = (0..N)
        .map(|i| [a, b][i % 2].enroll(&format!("SN-{i:03}"), "rev-a", &enrollment, None).unwrap().device_token)
        .collect();
    let base = HeadDoc { id: "doc-1".into(), serial: 1, targets: Default::default() };
    let head = HeadDoc { id: "doc-2".into(), serial: 2, targets: Default::default() };
    a.start_rollout(&Caller::Local, "stable", &base, 100, None, 20).unwrap();
    let report = |result: Option<&str>| Report {
        channel: Some("stable".into()),
        current: Some("c1".into()),
        last_result: result.map(str::to_string),
        ..Report::default()
    };
    // Every device checks in through both servers at the same moment.
    let check_in_everywhere = |devices: std::ops::Range<usize>, result: Option<&'static str>| {
        std::thread::scope(|s| {
            for f in [a, b] {
                let (tokens, head, report) = (&tokens, &head, &report);
                let devices = devices.clone();
                s.spawn(move || {
                    for i in devices {
                        let d = f.device_for(&tokens[i]).unwrap();
                        let d = f.check_in(&d, report(result)).unwrap();
                        assert_eq!(f.pick(&d, "stable", head).unwrap(), Pick::Head);
                    }
                });
            }
        });
    };
    let figures = |f: &Fleet| {
        let st = f.rollout_status(f.rollout("stable").unwrap().unwrap()).unwrap();
        (st.took, st.failed, st.rollout.state)
    };
    check_in_everywhere(0..N, Some("updated"));
    assert_eq!(figures(a), (N, 0, RolloutState::Running));
    // 10 of 60 fail (16%, under the 20% limit): counted once each, the rollout runs on.
    check_in_everywhere(0..10, Some("rolled-back"));
    assert_eq!(figures(b), (N, 10, RolloutState::Running));
    // 3 more (21%): halted, and the reason names the figures and examples.
    check_in_everywhere(10..13, Some("rolled-back"));
    let (took, failed, state) = figures(a);
    assert_eq!((took, failed, state), (N, 13, RolloutState::Paused));
    let reason = a.rollout("stable").unwrap().unwrap().halt_reason.unwrap();
    assert!(reason.starts_with("13 of 60 devices that took serial 2 failed (21% > 20%): SN-000: "), "{reason}");
    // A failed device removed, a healthy one pinned (it no longer counts as taking it).
    b.remove(&Caller::Local, "SN-000").unwrap();
    let pinned = a.device_for(&tokens[20]).unwrap();
    a.check_in(&pinned, Report { pinned: Some(true), ..report(Some("updated")) }).unwrap();
    assert_eq!(figures(b), (N - 2, 12, RolloutState::Paused));
    // A new rollout starts from nothing.
    a.change_rollout(&Caller::Local, "stable", ferry_publisher::fleet::RolloutAction::Abort, None).unwrap();
    a.start_rollout(&Caller::Local, "stable", &head, 100, None, 20).unwrap();
    assert_eq!(figures(a), (0, 0, RolloutState::Running));
}

/// A rollout started before its counters were kept (a server upgraded in its middle): its
/// figures and halt read the devices as before, so a failed device's first check-in after
/// the upgrade cannot halt it as "1 of 1 failed".
#[test]
fn a_rollout_started_before_counters_counts_by_reading_the_devices() {
    use ferry_publisher::fleet::{HeadDoc, Report, RolloutState};
    const ALL: [&str; 12] = [
        "devices",
        "tokens",
        "audit",
        "events",
        "config",
        "rollouts",
        "reports",
        "marks",
        "rollout_counts",
        "rollout_failed",
        "limits",
        "sessions",
    ];
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("fleet");
    let settings = Settings { enrollments_per_minute: 10_000, ..Settings::default() };
    let base = HeadDoc { id: "doc-1".into(), serial: 1, targets: Default::default() };
    let head = HeadDoc { id: "doc-2".into(), serial: 2, targets: Default::default() };
    let report =
        |result: &str| Report { channel: Some("stable".into()), last_result: Some(result.into()), ..Report::default() };
    let check_in = |f: &Fleet, token: &str, result: &str| {
        let d = f.check_in(&f.device_for(token).unwrap(), report(result)).unwrap();
        f.pick(&d, "stable", &head).unwrap();
    };
    let tokens: Vec<String> = {
        let f = Fleet::open(&at, settings.clone()).unwrap();
        let enrollment = f.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
        let tokens: Vec<String> = (0..20)
            .map(|i| f.enroll(&format!("SN-{i:02}"), "rev-a", &enrollment, None).unwrap().device_token)
            .collect();
        f.start_rollout(&Caller::Local, "stable", &base, 100, None, 10).unwrap();
        for t in &tokens {
            check_in(&f, t, "updated");
        }
        check_in(&f, &tokens[0], "rolled-back");
        tokens
    };
    // What a store written before counters holds: no marks, no counters.
    {
        let db = FleetDb::open(&Location::Dir(at.clone()), &ALL).unwrap();
        for table in ["marks", "rollout_counts", "rollout_failed"] {
            let ops = db.scan(table, b"").unwrap().into_iter().map(|(key, _)| Op::Delete { table, key }).collect();
            db.write(ops).unwrap();
        }
    }
    let f = Fleet::open(&at, settings).unwrap();
    let figures = || {
        let st = f.rollout_status(f.rollout("stable").unwrap().unwrap()).unwrap();
        (st.took, st.failed, st.rollout.state)
    };
    assert_eq!(figures(), (20, 1, RolloutState::Running));
    // 2 of 20 (10%, not above the limit): still running, though this device's mark is the
    // only one the counters would hold.
    check_in(&f, &tokens[1], "rolled-back");
    assert_eq!(figures(), (20, 2, RolloutState::Running));
    check_in(&f, &tokens[2], "rolled-back");
    assert_eq!(figures(), (20, 3, RolloutState::Paused));
    let reason = f.rollout("stable").unwrap().unwrap().halt_reason.unwrap();
    assert!(reason.starts_with("3 of 20 devices that took serial 2 failed (15% > 10%): SN-00: "), "{reason}");
}

/// The enrollment token's rate limit is the fleet's, not each server's: enrollments through
/// two replicas at once draw on one bucket, so a balancer does not multiply the rate.
#[test]
fn replicas_share_the_enrollment_rate_limit() {
    let pg = Postgres::start(false).unwrap();
    let at = Location::parse(&pg.create_database("fleet").unwrap());
    let settings = Settings { enrollments_per_minute: 5, ..Settings::default() };
    let (a, b) = (Fleet::open(&at, settings.clone()).unwrap(), Fleet::open(&at, settings).unwrap());
    let enrollment = a.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
    let outcomes: Vec<Result<_, FleetError>> = std::thread::scope(|s| {
        let h: Vec<_> = (0..12)
            .map(|i| {
                let (f, enrollment) = ([&a, &b][i % 2], &enrollment);
                s.spawn(move || f.enroll(&format!("SN-{i}"), "rev-a", enrollment, None))
            })
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let enrolled = outcomes.iter().filter(|r| r.is_ok()).count();
    // 5 at once (a unit may refill while they run: one a 12 s).
    assert!((5..=6).contains(&enrolled), "{enrolled} enrolled: {outcomes:?}");
    assert!(
        outcomes.iter().all(|r| r.is_ok()
            || matches!(r, Err(FleetError::TooMany { what, .. }) if what.contains("enrollment token factory"))),
        "{outcomes:?}"
    );
    assert_eq!(b.devices().unwrap().len(), enrolled);
}
