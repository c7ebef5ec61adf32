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
        let cfs = tables.iter().map(|t| ColumnFamilyDescriptor::new(*t, Options::default()));
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
        let tables: Vec<&str> = tables.iter().copied().filter(|t| present.iter().any(|p| p == t)).collect();
        let db = DB::open_cf_for_read_only(&Options::default(), path, tables, false)
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
