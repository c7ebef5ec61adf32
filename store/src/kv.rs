//! A small durable key-value store with named tables, for the fleet server's state
//! (devices, tokens, configuration, rollouts, the audit log).
//!
//! What it is for: atomic, synced multi-key writes and prefix scans over RocksDB, without a
//! RocksDB type leaving this crate. What it is not for: meaning. The publisher's `fleet`
//! module decides what keys and values are; this module only promises that a write batch is
//! all there or not there after a crash (one synced RocksDB write batch), and that a second
//! process opening the same store gets [`StoreError::Locked`].

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use crate::error::{Result, StoreError};

/// An open store.
pub struct Kv {
    path: PathBuf,
    db: DB,
    read_only: bool,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("path", &self.path).finish()
    }
}

/// One change, or one condition, in a [`Kv::write`] batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: Vec<u8>,
    },
    /// A put of a key that must not exist yet (e.g. the next number of a log).
    Insert {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// A condition: the key holds `value` (or, with None, does not exist) when the batch is
    /// written, else nothing of the batch is. What a read-modify-write whose read happened
    /// before the batch checks, so a writer in another process (a replica on the same
    /// database) that came first is noticed instead of overwritten.
    Expect {
        table: &'static str,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// Adds `delta` to a counter: a value of 8 bytes, a big-endian signed number, or none
    /// (0). Writers adding to the same counter at once all count, and none waits for another
    /// (a RocksDB merge: the sum is made when the counter is read, [`Kv::counter`]).
    Add {
        table: &'static str,
        key: Vec<u8>,
        delta: i64,
    },
}

/// A counter's value as [`Op::Add`] writes it; anything but 8 bytes reads as damaged (None).
pub fn counter_value(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

/// The merge of [`Op::Add`]s: the stored counter (if any) plus each delta. A value that is
/// not 8 bytes fails the read that merges it (RocksDB reports it) rather than counting wrong.
fn add_counters(_key: &[u8], existing: Option<&[u8]>, deltas: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    let mut sum = match existing {
        Some(v) => counter_value(v)?,
        None => 0,
    };
    for d in deltas {
        sum = sum.wrapping_add(counter_value(d)?);
    }
    Some(sum.to_be_bytes().to_vec())
}

/// Every table's options: the counters' merge (a table without counters never uses it).
fn table_options() -> Options {
    let mut o = Options::default();
    o.set_merge_operator_associative("ferry-add-i64", add_counters);
    o
}

impl Op {
    /// The error of a condition that did not hold.
    pub fn conflict(table: &str, key: &[u8]) -> StoreError {
        StoreError::KvConflict { table: table.to_string(), key: String::from_utf8_lossy(key).into_owned() }
    }
}

impl Kv {
    /// Opens (creating if needed) the store at `path` with `tables`.
    pub fn open(path: &Path, tables: &[&'static str]) -> Result<Kv> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = tables.iter().map(|t| ColumnFamilyDescriptor::new(*t, table_options()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            if e.to_string().contains("LOCK") {
                StoreError::Locked { path: path.to_path_buf() }
            } else {
                StoreError::Db { path: path.to_path_buf(), message: e.to_string() }
            }
        })?;
        Ok(Kv { path: path.to_path_buf(), db, read_only: false })
    }

    /// Opens an existing store for reading only, as it was at this moment, beside the
    /// process that writes it (a read-only open takes no lock). Writes through it fail.
    pub fn open_read_only(path: &Path, tables: &[&'static str]) -> Result<Kv> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::Db { path: path.to_path_buf(), message: "no such store".into() });
        }
        // A table a newer version added and no writer has created yet reads as empty.
        let present = DB::list_cf(&Options::default(), path)
            .map_err(|e| StoreError::Db { path: path.to_path_buf(), message: e.to_string() })?;
        let cfs = tables
            .iter()
            .filter(|t| present.iter().any(|p| p == *t))
            .map(|t| ColumnFamilyDescriptor::new(*t, table_options()));
        let db = DB::open_cf_descriptors_read_only(&Options::default(), path, cfs, false)
            .map_err(|e| StoreError::Db { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Kv { path: path.to_path_buf(), db, read_only: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::Db { path: self.path.clone(), message: e.to_string() }
    }

    fn cf(&self, table: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(table)
            .ok_or_else(|| StoreError::Db { path: self.path.clone(), message: format!("no table {table}") })
    }

    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(cf) = self.db.cf_handle(table) else { return self.absent(table).map(|()| None) };
        self.db.get_cf(cf, key).map_err(|e| self.err(e))
    }

    /// A table not in the store: in a read-only open of a store written by an older
    /// version, it is empty; anywhere else it is an error.
    fn absent(&self, table: &str) -> Result<()> {
        match self.cf(table) {
            Err(_) if self.read_only => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    /// Applies every op or none, synced to disk before it returns; with conditions
    /// ([`Op::Insert`], [`Op::Expect`]) that do not hold, none and [`StoreError::KvConflict`].
    /// One process writes a store (RocksDB's lock): the conditions are checked just before
    /// the batch, and the caller's own locks keep its read-modify-writes from racing.
    pub fn write(&self, ops: Vec<Op>) -> Result<()> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                Op::Put { table, key, value } => batch.put_cf(self.cf(table)?, key, value),
                Op::Delete { table, key } => batch.delete_cf(self.cf(table)?, key),
                Op::Insert { table, key, value } => {
                    if self.get(table, &key)?.is_some() {
                        return Err(Op::conflict(table, &key));
                    }
                    batch.put_cf(self.cf(table)?, key, value)
                }
                Op::Expect { table, key, value } => {
                    if self.get(table, &key)? != value {
                        return Err(Op::conflict(table, &key));
                    }
                }
                Op::Add { table, key, delta } => batch.merge_cf(self.cf(table)?, key, delta.to_be_bytes()),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.err(e))
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    pub fn scan(&self, table: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if self.db.cf_handle(table).is_none() {
            return self.absent(table).map(|()| out);
        }
        for item in self.db.iterator_cf(self.cf(table)?, IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// A counter [`Op::Add`] writes (0 if none).
    pub fn counter(&self, table: &str, key: &[u8]) -> Result<i64> {
        match self.get(table, key)? {
            None => Ok(0),
            Some(v) => counter_value(&v).ok_or_else(|| StoreError::Db {
                path: self.path.clone(),
                message: format!("counter {table}/{} holds {} bytes, not 8", String::from_utf8_lossy(key), v.len()),
            }),
        }
    }

    /// At most `limit` `(key, value)`s whose key starts with `prefix` and sorts after
    /// `after` (from the first if None), in key order: one page of a long table.
    pub fn page(
        &self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if self.db.cf_handle(table).is_none() {
            return self.absent(table).map(|()| out);
        }
        let from = match after {
            Some(a) if a >= prefix => a.to_vec(),
            _ => prefix.to_vec(),
        };
        for item in self.db.iterator_cf(self.cf(table)?, IteratorMode::From(&from, Direction::Forward)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|a| *k <= *a) {
                continue;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The last `(key, value)` of a table, if any (e.g. the newest audit entry).
    pub fn last(&self, table: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.db.cf_handle(table).is_none() {
            return self.absent(table).map(|()| None);
        }
        match self.db.iterator_cf(self.cf(table)?, IteratorMode::End).next() {
            Some(item) => {
                let (k, v) = item.map_err(|e| self.err(e))?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }
}
