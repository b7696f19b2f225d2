//! The rooms of one server, keyed by (collection, document): created by the first
//! connection, dropped with the last, bounded in number, as connections are.
//!
//! # Invariants
//! - A room is removed from the map only when no connection is joined to it or joining it
//!   (`Room::users`, changed under the map's lock), so a joiner never registers in a room
//!   whose follower was stopped.
//! - [`Member`] is the only way to be in a room, and dropping it leaves: a connection that
//!   ends however it ends frees its slot, its awareness ids and, if last, the room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::http::StatusCode;
use replicate_actors::Replicate;
use tokio::sync::watch;

use super::awareness::ConnId;
use super::room::{Link, Room};
use super::{WsSettings, WsStats};
use crate::error::ApiError;

type Key = (String, String);

/// Every websocket room of a server.
pub struct Hub {
    rooms: Mutex<HashMap<Key, Arc<Room>>>,
    pub settings: WsSettings,
    pub stats: Arc<WsStats>,
    connections: AtomicUsize,
    next_id: AtomicU64,
}

/// A connection's place in a room; dropping it leaves the room.
pub struct Member {
    hub: Arc<Hub>,
    pub room: Arc<Room>,
    pub id: ConnId,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.room.unregister(self.id);
        self.hub.release(&self.room);
        self.hub.connections.fetch_sub(1, Ordering::SeqCst);
        self.hub.stats.connections(-1);
    }
}

fn overloaded(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
}

impl Hub {
    pub fn new(settings: WsSettings) -> Hub {
        Hub {
            rooms: Mutex::default(),
            settings,
            stats: Arc::default(),
            connections: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Room>>> {
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the room of `document` in `collection` (loading it if new) with `link`.
    ///
    /// # Errors
    /// 503 `overloaded` past `max_connections` or `max_rooms`; what loading the document
    /// answered (a bad name is 400).
    pub async fn join(
        self: &Arc<Self>,
        replicate: &Replicate,
        shutdown: &watch::Receiver<bool>,
        collection: &str,
        document: &str,
        link: Link,
    ) -> Result<Member, ApiError> {
        let max = self.settings.max_connections;
        if self.connections.fetch_add(1, Ordering::SeqCst) >= max {
            self.connections.fetch_sub(1, Ordering::SeqCst);
            return Err(overloaded(format!(
                "{max} websocket connections are open; retry later"
            )));
        }
        self.stats.connections(1);
        let room = match self.enter(collection, document) {
            Ok(room) => room,
            Err(e) => {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                self.stats.connections(-1);
                return Err(e);
            }
        };
        // From here on dropping the member undoes everything.
        let member = Member {
            hub: self.clone(),
            room,
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
        };
        member.room.load(replicate, shutdown).await?;
        member.room.register(member.id, link);
        Ok(member)
    }

    /// The room for the key, created if absent (or if the old one died), counted as used.
    fn enter(&self, collection: &str, document: &str) -> Result<Arc<Room>, ApiError> {
        let mut rooms = self.lock();
        let key = (collection.to_string(), document.to_string());
        let room = match rooms.get(&key) {
            Some(room) if !room.is_dead() => room.clone(),
            _ => {
                let max = self.settings.max_rooms;
                if rooms.len() >= max && !rooms.contains_key(&key) {
                    return Err(overloaded(format!(
                        "{max} documents have websocket connections; retry later"
                    )));
                }
                let room = Arc::new(Room::new(collection, document, self.stats.clone()));
                if rooms.insert(key, room.clone()).is_none() {
                    self.stats.rooms(1);
                }
                room
            }
        };
        room.users.fetch_add(1, Ordering::SeqCst);
        Ok(room)
    }

    /// One user of `room` is gone; the last one drops it and stops its follower.
    fn release(&self, room: &Arc<Room>) {
        let mut rooms = self.lock();
        if room.users.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        room.stop();
        let key = (room.collection.clone(), room.document.clone());
        if rooms.get(&key).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&key);
            self.stats.rooms(-1);
        }
    }
}
